"""The one constructor of every settings dataclass: from a section dict the schema has validated and filled.

Defaults live in the schema alone (``workflow/schemas/config.schema.yaml``): ``pipeline.config.validate_slice``
fills them at each stage's entry, so a validated section holds every key. ``build`` therefore takes exactly the
dataclass's fields, no more and no less, and carries no defaults of its own; a key the schema has but the dataclass
lacks (or the reverse) is an error here at run time and in ``tests/settings/test_settings.py`` before that.

Values are kept as validated (an ``int`` where the schema allows a number stays an ``int``), so ``dataclasses.asdict``
of a built object serialises to the same JSON as the section it came from: hashes of settings do not change.
Lists become tuples, so the objects stay immutable.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from carvana_seg.pipeline.errors import ConfigError

T = TypeVar("T")


def build(cls: type[T], values: Mapping[str, Any]) -> T:
    """An instance of the settings dataclass ``cls`` (which names its schema section in ``SECTION``) from a
    validated section; nested sections become their own dataclasses. ConfigError naming the section when the keys
    and the fields differ (the schema and ``carvana_seg.settings`` out of step)."""
    section = getattr(cls, "SECTION", cls.__name__)
    if not isinstance(values, Mapping):
        raise ConfigError(f"config key '{section}': expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    missing, unknown = sorted(set(names) - set(values)), sorted(set(values) - set(names))
    if missing or unknown:
        raise ConfigError(
            f"config key '{section}': the validated section and {cls.__module__}.{cls.__name__} "
            f"disagree (missing {missing}, unknown {unknown}); validate it first "
            f"(pipeline.config.validate_slice) or bring the dataclass in step with the schema"
        )
    kwargs = {}
    for name in names:
        hint = hints[name]
        nested = hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None
        kwargs[name] = build(nested, values[name]) if nested else _frozen(values[name])
    return cls(**kwargs)


def _frozen(value: Any) -> Any:
    """Lists as tuples (recursively): a frozen dataclass should not hold a mutable list."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value
