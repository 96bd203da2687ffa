"""Where a catalog lives: a SQLite file under the data root (the default), or a PostgreSQL database.

A PostgreSQL catalog is named by a URL without a password: `postgresql://user@host:5432/db` (libpq's
URI form; query parameters such as `?sslmode=require` or `?host=/run/postgresql` pass through). The
password comes from where libpq looks for it, `PGPASSWORD` or a `~/.pgpass` file (`PGPASSFILE`),
never from the config: configs are copied into logs and artifacts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

SCHEMES = ("postgresql", "postgres")
# libpq parameters whose value is a secret: the password, and the passphrase of the client's SSL key
# (the secrets21 audit: `?sslpassword=` was accepted, printed and written into catalog.moved).
SECRET_PARAMS = ("password", "sslpassword")


def secret_params(query: str) -> list[str]:
    return [k for k in parse_qs(query, keep_blank_values=True) if k.strip().lower() in SECRET_PARAMS]


def check_url(url: str) -> str:
    """`url` if it names a PostgreSQL database without a password; else ValueError with one line
    that never repeats a password."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port              # ValueError when not a number in 0-65535
    except ValueError:
        raise ValueError("not a valid URL: write postgresql://user@host:5432/dbname") from None
    if parts.scheme not in SCHEMES:
        raise ValueError(f"scheme {parts.scheme or '(none)'!r} is not supported: write "
                         f"postgresql://user@host:5432/dbname (leave catalog.url out for the SQLite catalog)")
    if parts.password is not None or "password" in [k.strip().lower() for k in secret_params(parts.query)]:
        raise ValueError("the URL holds a password: remove it, and give it in PGPASSWORD or a ~/.pgpass file "
                         "(configs are copied into logs and artifacts)")
    if secret_params(parts.query):
        raise ValueError("the URL holds the SSL key's passphrase (sslpassword): remove it, and give it in a libpq "
                         "service file readable by you only (?service=NAME, PGSERVICEFILE): configs are copied into "
                         "logs and artifacts")
    if not parts.path.strip("/") or "/" in parts.path.strip("/"):
        raise ValueError("the URL must name one database: postgresql://user@host:5432/dbname")
    if port == 0:
        raise ValueError("port 0 is not a PostgreSQL port")
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:                # checked again, with a clear message, when the catalog opens
        return url.strip()
    try:
        conninfo_to_dict(url.strip())  # libpq's own parser: unknown query parameters, bad escapes
    except Exception as exc:           # psycopg.ProgrammingError; its text names the parameter only
        raise ValueError(f"libpq rejects the URL: {str(exc).splitlines()[0]}") from None
    return url.strip()


def display_url(url: str) -> str:
    """The URL as messages show it: never a password, even one that got past check_url."""
    parts = urlsplit(url)
    if secret_params(parts.query):
        query = "&".join(f"{piece.split('=', 1)[0]}=***" if piece.split("=", 1)[0].strip().lower() in SECRET_PARAMS
                         else piece for piece in parts.query.split("&"))
        parts = parts._replace(query=query)
    if parts.password is None:
        return parts.geturl()
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + parts.netloc.rsplit("@", 1)[1]).geturl()


def catalog_exists(where: "str | Path | PostgresCatalog") -> bool:
    """Whether there is a catalog at `where` (config's `catalog_path`) to read: a PostgreSQL catalog
    is a database, taken to be there (opening it says if it is not); a SQLite one is its file."""
    return isinstance(where, PostgresCatalog) or Path(where).exists()


@dataclass(frozen=True)
class PostgresCatalog:
    """A PostgreSQL catalog and the data root its relative file paths belong to."""

    url: str
    root: Path

    def __str__(self) -> str:
        return display_url(self.url)

    def __repr__(self) -> str:
        return f"PostgresCatalog({display_url(self.url)!r}, root={str(self.root)!r})"
