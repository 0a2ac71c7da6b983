"""Type checks of config values that come from YAML recipes, ``--set`` overrides and Python code.

PyYAML follows YAML 1.1, which reads ``1e3`` (no dot) as the string ``"1e3"``, so numeric fields accept
numeric strings and convert them, and string fields take numbers (``output_dir: 2024``) and paths. Anything
else of the wrong type raises a `ValueError` that names the field, the value and the expected type, before
any work starts. NumPy and other `numbers` scalars count as numbers.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import os
import types
import typing
from typing import Any

_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(annotation))
    if origin in (list, tuple):
        item = (typing.get_args(annotation) or (Any,))[0]
        return f"a list of {_describe(item).replace('an ', '').replace('a ', '')}s" if item is not Any else "a list"
    if origin is dict or annotation is dict:
        return "a mapping"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and annotation in _TYPE_WORDS:
        return _TYPE_WORDS[annotation]
    return getattr(annotation, "__name__", str(annotation))


class _Mismatch(Exception):
    pass


def _convert(value: Any, annotation: Any) -> Any:
    """Return ``value`` converted to ``annotation``, or raise `_Mismatch`."""
    if annotation is Any:
        return value
    origin = typing.get_origin(annotation)

    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _convert(value, option)
            except _Mismatch:
                continue
        raise _Mismatch

    if annotation is type(None):
        if value is None:
            return None
        raise _Mismatch

    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        item = (typing.get_args(annotation) or (Any,))[0]  # list[X] and tuple[X, ...]
        return origin(_convert(element, item) for element in value)

    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        return value

    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch

    if annotation in (int, float):
        return _convert_number(value, annotation)

    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return str(value)  # YAML reads an unquoted `2024` as a number
        raise _Mismatch

    if dataclasses.is_dataclass(annotation):
        return _build_dataclass(value, annotation)

    return value  # a type this module does not check


def _build_dataclass(value: Any, cls: type) -> Any:
    """Return ``value`` if it is a ``cls``, or a ``cls`` built from a mapping of its fields."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise _Mismatch
    unknown, missing = unknown_and_missing_keys(cls, value)
    if unknown:
        known = sorted(f.name for f in dataclasses.fields(cls))
        raise ValueError(f"{cls.__name__} has no field {', '.join(map(repr, unknown))}; "
                         f"valid fields: {', '.join(known)}.")
    if missing:
        raise ValueError(f"{cls.__name__} is missing the field {', '.join(map(repr, missing))}; got {value!r}.")
    return cls(**value)


def _convert_number(value: Any, kind: type) -> int | float:
    if isinstance(value, bool):
        raise _Mismatch
    if isinstance(value, str):
        try:
            value = float(value.strip()) if kind is float or not value.strip().lstrip("+-").isdigit() else int(value)
        except ValueError:
            raise _Mismatch from None
    if kind is int:
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real) and float(value).is_integer():
            return int(value)
        raise _Mismatch
    if isinstance(value, numbers.Real):
        return float(value)
    raise _Mismatch


def unknown_and_missing_keys(cls: type, mapping: dict) -> tuple[list[str], list[str]]:
    """Return the keys of ``mapping`` that are not fields of dataclass ``cls``, and the required fields it lacks."""
    known = {f.name for f in dataclasses.fields(cls)}
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    return sorted(set(mapping) - known), [name for name in required if name not in mapping]


def close_match_hint(unknown: typing.Iterable[str], known: typing.Iterable[str]) -> str:
    """Return `` (did you mean 'x' for 'y'?)`` for the unknown keys that resemble a known one, else ``""``."""
    known = list(known)
    guesses = [(key, difflib.get_close_matches(key, known, n=1)) for key in unknown]
    hints = "; ".join(f"did you mean {guess[0]!r} for {key!r}?" for key, guess in guesses if guess)
    return f" ({hints})" if hints else ""


def format_value(value: Any) -> str:
    """Format a value for an error message: ``null``, or its repr (at most 60 characters) and type."""
    return "null" if value is None else f"{value!r:.60} ({type(value).__name__})"


def is_path_like(name: str) -> bool:
    """Return True if ``name`` is written as a filesystem path rather than a Hub id or a sae-lens release.

    A Hub id has one slash (``owner/name``) and a release none, so a name that starts with ``/``, ``.`` or
    ``~``, contains a backslash, has two or more slashes or ends with one is a path.
    """
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1 or name.endswith("/")


def check_field_types(instance: Any, names: typing.Iterable[str] | None = None) -> None:
    """Convert the fields of a dataclass instance to their annotated types, in place.

    Args:
        instance: the dataclass instance, usually from its ``__post_init__``.
        names: the fields to check (default: every field).

    Raises:
        ValueError: naming the first field whose value does not match its annotation.
    """
    cls = type(instance)
    hints = typing.get_type_hints(cls)
    selected = set(names) if names is not None else None
    for field in dataclasses.fields(cls):
        if selected is not None and field.name not in selected:
            continue
        value = getattr(instance, field.name)
        try:
            setattr(instance, field.name, _convert(value, hints[field.name]))
        except _Mismatch:
            raise ValueError(
                f"{cls.__name__}.{field.name} must be {_describe(hints[field.name])}, got {value!r} "
                f"({type(value).__name__}). Fix the value where it is set (recipe, --set or code)."
            ) from None
        except ValueError as error:  # raised while building a nested dataclass from a mapping
            raise ValueError(f"{cls.__name__}.{field.name}: {error}") from None
