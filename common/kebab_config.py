"""Settings as typed dataclasses read from, and written to, kebab-case keys.

Guarantee: a settings object exists only with known keys, each of the declared type and
inside its range; anything else is refused with the key, the value and the fix. Keys
are kebab-case, as in Flower's run config (``noise-multiplier``). The groups built on
this are in ``common/plan.py`` (what crosses the wire) and ``common/config.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import fields
from pathlib import PurePath
from typing import Any, get_type_hints

from fedshield.common.errors import ConfigError


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class KebabConfig:
    """Build from / export to a dict of kebab-case keys, validating types and ranges."""

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, allow_unknown: bool = False):
        hints = get_type_hints(cls)
        known = {_kebab(f.name): f for f in fields(cls)}
        kwargs = {}
        for key, value in values.items():
            if key not in known:
                if allow_unknown:
                    continue
                raise ConfigError(
                    f"unknown configuration key '{key}'; known keys: {', '.join(sorted(known))}"
                )
            target = hints[known[key].name]
            kwargs[known[key].name] = _coerce(key, value, target)
        config = cls(**kwargs)
        config.validate()
        return config

    @classmethod
    def from_options(cls, **options: Any):
        """From a command's options named as the fields (paths become text); options that
        are not fields are ignored, so a command passes all of its own."""
        names = {f.name for f in fields(cls)}
        return cls.from_dict(
            {
                _kebab(name): str(value) if isinstance(value, PurePath) else value
                for name, value in options.items()
                if name in names
            }
        )

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """Every key of this group, kebab-case, in declaration order."""
        return tuple(_kebab(f.name) for f in fields(cls))

    def as_dict(self) -> dict[str, Any]:
        return {_kebab(f.name): getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes):
        config = dataclasses.replace(self, **changes)
        config.validate()
        return config

    def validate(self) -> None:  # pragma: no cover - overridden
        pass


def _coerce(key: str, value: Any, target: type) -> Any:
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif target in (int, float) and not isinstance(value, bool):
        # An int takes a float only when it is whole; a float takes either.
        if isinstance(value, int) or (
            isinstance(value, float) and (target is float or value.is_integer())
        ):
            return target(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return target(value)
    elif target is str and isinstance(value, str):
        return value
    raise ConfigError(
        f"configuration key '{key}': expected {target.__name__}, got {value!r} "
        f"({type(value).__name__})"
    )


def require(condition: bool, key: str, value: Any, rule: str) -> None:
    if not condition:
        raise ConfigError(f"configuration key '{key}' = {value!r}: {rule}")
