"""How a configuration problem is told: one line (`ConfigError`) that names the key, from a pydantic
error (`error_line`) or a file a user named (`user_file`). Beside config.py, which re-exports them."""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pydantic import ValidationError


class ConfigError(ValueError):
    """A configuration problem, phrased as one line that names the offending key."""


def error_line(exc: ValidationError, section: str = "") -> str:    # one line: where (dotted), what, how many more
    errors = exc.errors()
    err = errors[0]
    where = ".".join([section] * bool(section) + [str(p) for p in err["loc"]]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    msg = {"missing": "required key is missing", "extra_forbidden": "unknown key"}.get(err["type"], msg)
    more = len(errors) - 1
    if err["type"] == "missing":        # a missing key beside an unknown one like it is a typo: say which
        unknown = [e["loc"] for e in errors if e["type"] == "extra_forbidden" and e["loc"][:-1] == err["loc"][:-1]]
        typo = difflib.get_close_matches(str(err["loc"][-1]), [str(loc[-1]) for loc in unknown], n=1)
        if typo:
            msg += f"; the unknown key {typo[0]!r} looks like a misspelling of it"
            more -= 1
    return f"{where}: {msg}" + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


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
