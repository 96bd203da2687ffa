"""Checks below config.py's models: the strict base model every section derives from (`Strict`: no
unknown key, no yes/no for a number) and merging overrides over the file (`deep_merge`). Split out
of config.py, which had reached the 400-line limit; config.py imports them."""

from __future__ import annotations

from typing import Any, ClassVar, get_args

from pydantic import BaseModel, ConfigDict, field_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)   # nan: "should be a finite number", not "<= 1"
    yes_no_means: ClassVar[dict[str, tuple[str, str]]] = {}   # field: what its no and yes stand for

    @field_validator("*", mode="before")
    @classmethod
    def no_yes_no_for_a_number(cls, value: Any, info) -> Any:
        # YAML reads yes/no/on/off/true/false as booleans and pydantic takes True for 1:
        # `max_unknown_accepted: yes` was a cap of 1, none at all, and `epochs: true` one epoch
        if isinstance(value, bool) and info.field_name in cls.yes_no_means:
            return cls.yes_no_means[info.field_name][value]
        items = value if isinstance(value, list) else [value]     # (a mapping is a section: checked inside)
        said = next((v for v in items if isinstance(v, bool)), None)      # `licenses: [4, yes]` too
        if said is not None and not takes_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError(f"{str(said).lower()} is a yes/no value, and this setting is not one (YAML reads "
                             "yes, no, on, off, true and false as yes/no values)")
        return value


def takes_bool(annotation: Any) -> bool:
    """Whether a field's type admits a yes/no value (bool itself, Any, or a union holding one)."""
    return annotation is bool or annotation is Any or any(takes_bool(a) for a in get_args(annotation))


def deep_merge(base: dict, extra: dict) -> dict:
    """Overrides like {"train": {"epochs": 2}} replace leaves only."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
