"""Cache directory for files that blockem_trl builds on first use (dequantized models, activations)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV_VAR = "BLOCKEM_CACHE"
"""Environment variable that overrides the cache root."""

CACHE_SUBDIR = "blockem_trl"


def cache_root() -> Path:
    """Return the cache root: `$BLOCKEM_CACHE`, else `$XDG_CACHE_HOME/blockem_trl`, else `~/.cache/blockem_trl`.

    The folder is not created here, so calling this never touches the file system.
    """
    override = os.environ.get(CACHE_ENV_VAR)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / CACHE_SUBDIR
