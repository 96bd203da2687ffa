"""Checks below config.py's models: the strict base model every section derives from (`Strict`: no
unknown key, no yes/no for a number), merging overrides over the file (`deep_merge`), where a relative
path is taken from (`resolve_paths`; `check_cwd_data_root`: a 0.1.0 data root it no longer names) and
what a YAML error says (`yaml_problem`). Split out of config.py, which had reached the 400-line limit;
config.py imports them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, get_args

import yaml

from pydantic import BaseModel, ConfigDict, field_validator

from mlc_pipeline.config_messages import ConfigError
from mlc_pipeline.layout import DataLayout
from mlc_pipeline.secrets import URL_RE

# Settings that name a file or folder. Relative in a config file: from that file's folder, as data_dir
# always was (source.local.folder was from the current directory: the dayone26 audit); typed with --set:
# from the current directory. PRETRAINED_WORDS: train.pretrained's choices that are no file (weights.py).
PATH_SETTINGS = (("data_dir",), ("cache_dir",), ("source", "csv"), ("source", "local", "folder"), ("train", "pretrained"))
PRETRAINED_WORDS = {"none", "false", "no", "off", "scratch", "", "auto", "imagenet", "true", "yes", "on"}


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


def yaml_problem(exc: yaml.YAMLError) -> str:
    """What PyYAML found wrong, and where: `line 3, column 1: expected ',' or '}', but got '<stream end>'
    (while parsing a flow mapping)`. The first line of str(exc) was only the context, without either."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if not problem:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context = getattr(exc, "context", None)
    return where + problem + (f" ({context})" if context else "")


def resolve_paths(data: dict, base: Path) -> dict:
    """`data` with each relative path of PATH_SETTINGS taken from `base` (not a URL, a `~/` path or a
    `train.pretrained` keyword); `data` itself is not changed."""
    out = dict(data)
    for keys in PATH_SETTINGS:
        node = out
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                break
            node[key] = node = dict(node[key])
        else:
            value = node.get(keys[-1])
            if isinstance(value, (str, Path)) and not (URL_RE.match(str(value)) or str(value).startswith("~") or
                                                       Path(value).is_absolute() or keys[-1] == "pretrained"
                                                       and str(value).strip().lower() in PRETRAINED_WORDS):
                node[keys[-1]] = str((base / value).resolve())
    return out


def check_cwd_data_root(file_data: dict, overrides: dict, path: Path) -> None:
    """Refuse a relative `data_dir` of the config file that names, from the file's folder, no data root
    yet, when from the current directory it names a data root written by mlc-pipeline before
    2026-12-01 (0.1.0): that code took `data_dir` from the current directory, so it is the user's data,
    and going on would start an empty root beside it (collect downloads everything again) and never
    say so again (the upgrade29 audit). Such a root holds catalog.sqlite and tmp/downloads, where
    that code wrote partial downloads (no later version writes it); a root of later code is no sign:
    the repository's own data/ is configs/offline.yaml's, not that of a config elsewhere."""
    written = file_data.get("data_dir")
    if "data_dir" in overrides or not isinstance(written, str):
        return
    here = Path(resolve_paths({"data_dir": written}, path.resolve().parent)["data_dir"])
    cwd = Path(resolve_paths({"data_dir": written}, Path.cwd())["data_dir"])
    new, old = DataLayout(here), DataLayout(cwd)
    if here == cwd or new.catalog.exists() or new.raw().exists() or new.models.exists():
        return
    if old.catalog.is_file() and old.legacy_downloads.is_dir():
        raise ConfigError(
            f"config: data_dir: {written} is taken from the config file's folder since 2026-12-01 ({here}, "
            f"no data root yet), no longer from the current directory ({cwd}, the data root of an older "
            f"mlc-pipeline); to go on with that one write data_dir: {cwd} in {path} (or add --set "
            f"data_dir={cwd}), to start a new one there write data_dir: {here}")
