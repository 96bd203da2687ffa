"""How a configuration problem is told: a line (`ConfigError`) that names the key, from a pydantic
error (`error_line`: further problems each on a line below it) or a file a user named (`user_file`). Beside config.py, which re-exports them."""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, get_args, get_origin

from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A configuration problem, phrased as one line that names the offending key (several problems of
    one config: one line each, the first line saying how many follow)."""


def error_line(exc: ValidationError, section: str = "", model: type[BaseModel] | None = None) -> str:
    """The first problem on the first line, naming its key (dotted); every further one on a line of its
    own below it (a user fixed one, reran, and met the next: the dayone26 audit). An unknown key that
    looks like a misspelling of a key the model has (`model`, at the problem's place) says which."""
    errors = exc.errors()
    typos = {}          # an unknown key's location -> the key it looks like
    for err in errors:
        if err["type"] == "extra_forbidden":
            loc = err["loc"]
            missing = [str(e["loc"][-1]) for e in errors if e["type"] == "missing" and e["loc"][:-1] == loc[:-1]]
            known = missing or keys_at(model, loc[:-1])
            typos[loc] = next(iter(difflib.get_close_matches(str(loc[-1]), known, n=1)), None)
    said, lines = set(), []
    for err in errors:
        where = ".".join([section] * bool(section) + [str(p) for p in err["loc"]]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        msg = {"missing": "required key is missing", "extra_forbidden": "unknown key"}.get(err["type"], msg)
        if err["type"] == "missing":    # a missing key beside an unknown one like it is a typo: say which
            typo = next((loc for loc, meant in typos.items() if loc[:-1] == err["loc"][:-1]
                         and meant == str(err["loc"][-1])), None)
            if typo:
                msg += f"; the unknown key {typo[-1]!r} looks like a misspelling of it"
                said.add(typo)
        elif err["type"] == "extra_forbidden":
            if err["loc"] in said:
                continue
            if typos.get(err["loc"]):
                msg += f"; did you mean {typos[err['loc']]!r}?"
        lines.append(f"{where}: {msg}")
    more = len(lines) - 1
    return lines[0] + (f" (and {more} more problem{'s' * (more > 1)}, below)" if more else "") + \
        "".join(f"\n  {line}" for line in lines[1:])


def keys_at(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """The keys `model` takes at `loc` (a section's, a class's under a mapping of them); [] if unknown."""
    name_next = False
    for part in loc:
        if name_next:                   # classes: {name: QuerySet}: the name is no key of the model
            name_next = False
            continue
        if model is None or part not in model.model_fields:
            return []
        annotation = model.model_fields[part].annotation
        name_next = get_origin(annotation) is dict
        model = next(iter(section_models(annotation)), None)
    return list(model.model_fields) if model is not None else []


def section_models(annotation) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (`QuerySet | None`, `dict[str, QuerySet]`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in get_args(annotation) for m in section_models(a)]


@contextmanager
def user_file(what: str, path: Path, kind: str) -> Iterator[None]:
    """Reading a file a user named (the config, a URL list): a missing file, a folder or text that is
    not UTF-8 becomes one ConfigError line, "<what>: ...", instead of a traceback."""
    try:
        yield
    except FileNotFoundError:
        raise ConfigError(f"{what}: file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{what}: {path} is a folder, not a {kind} file") from None
    except PermissionError:
        raise ConfigError(f"{what}: {path} cannot be read (permission denied): check who owns it and its "
                          f"permissions") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what}: {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
                          f"at offset {exc.start}); save it as UTF-8") from None


def check_override_classes(file_data: dict, overrides: dict, path: Path) -> None:
    """A class named in the overrides (`--set`, a flow run's parameters) that the config file does
    not have and that gets no queries is a typo (`kyte`): say so, rather than the merged config's
    "classes.kyte.queries: required key is missing" (a ConfigError)."""
    named, known = overrides.get("classes"), file_data.get("classes")
    if not isinstance(named, dict) or not isinstance(known, dict):
        return                          # the merged config's own checks say what is wrong
    for name, value in named.items():
        if name not in known and not (isinstance(value, dict) and "queries" in value):
            raise ConfigError(f"config: classes.{name} is set over {path}, which has no class {name!r} (its "
                              f"classes: {', '.join(map(str, known))}); a new class needs its queries and count")
