"""Flickr credentials: read from the environment, never from config files, and never shown.

Every string that may reach a log, the catalog, an artifact or an exception passes through
`redact()`, and `install_log_redaction()` puts a filter on the root logger's handlers so that a
secret that slips into a log record is masked anyway. The object store's credentials (AWS_*) are
registered for masking the same way, and a data_dir URL may not hold any (`check_data_url`).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field

KEY_ENV = "FLICKR_API_KEY"
SECRET_ENV = "FLICKR_API_SECRET"
OFFLINE_KEY = "offline-key"      # what we send to the bundled local server when no key is set
MASK = "***"
# The object store's credentials, where botocore (and the docs) take them from. The key id too: it names
# the account, and with a leaked secret it is half of what an attacker needs.
STORE_SECRET_ENVS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


class MissingCredentials(RuntimeError):
    pass


@dataclass(frozen=True)
class Credentials:
    key: str = field(repr=False)
    secret: str = field(repr=False)

    def __repr__(self) -> str:  # a Credentials object printed by accident shows nothing
        return "Credentials(key=***, secret=***)"

# data_dir: s3://bucket/prefix (any fsspec URL); `s3:/bucket` matches too, to be refused as a typo
URL_RE = re.compile(r"^[a-z][a-z0-9+.-]*:/+")
# Option names that hold credentials (nested ones too). passphrase, auth and Authorization (in `headers`)
# were let through (the secrets21 audit, by reading: sftp's passphrase, HTTP stores' auth and headers).
SECRET_OPTION_RE = re.compile(r"key$|token|secret|passw|passphrase|pwd|access_key|credential|connection_string|"
                              r"^auth$|authoriz|cookie", re.I)

_known_secrets: set[str] = set()
KEY_BLOCK, SECRET_BLOCK = "flickr-api-key", "flickr-api-secret"


def prefect_secret_blocks() -> tuple[str, str]:
    """Key and secret from Prefect Secret blocks `flickr-api-key` / `flickr-api-secret`, when a
    Prefect server is configured (PREFECT_API_URL) and the blocks exist; ("", "") otherwise."""
    from prefect.blocks.system import Secret
    values = []
    for name in (KEY_BLOCK, SECRET_BLOCK):
        try:
            values.append(Secret.load(name).get().strip())
        except ValueError:            # Prefect raises ValueError for a block that does not exist
            values.append("")
    return values[0], values[1]


def remember(*values: str) -> None:
    """Register values that must be masked wherever they appear, also as a URL writes them (a token
    with `+`, `/` or a space, in a request path of an access log: the verify21 audit)."""
    from urllib.parse import quote, quote_plus
    for v in values:
        if v and len(v) >= 4:
            _known_secrets.update({v, quote(v, safe=""), quote_plus(v), quote(v)})


def data_url_problem(value: object) -> str | None:
    """What is wrong with a data_dir that looks like a URL (`scheme:/...`), in words that never repeat
    credentials; None for a good URL or anything else (a local path, even one with a colon in it)."""
    if not isinstance(value, str) or not URL_RE.match(value):
        return None
    scheme, _, rest = value.partition(":")
    fixed = f"{scheme}://{rest.lstrip('/')}"
    if has_userinfo(fixed):
        return (f"the {scheme}:// URL holds credentials (user:password@): remove them, and set AWS_ACCESS_KEY_ID / "
                f"AWS_SECRET_ACCESS_KEY (or your store's variables) in the environment (configs are copied "
                f"into logs and artifacts)")
    if scheme.lower() == "file":        # file://srv/data is the *relative* path ./srv/data to fsspec
        fixed = f"file:///{rest.lstrip('/')}"
    if not rest.startswith("//") or (scheme.lower() == "file" and not rest.startswith("///")):
        # `s3:/bucket`: a typo, which would otherwise be a local folder `s3:`; `file:/srv`, `file://srv`:
        # fsspec reads the second as ./srv, a fresh empty root in whatever folder the command ran in
        return f"{value} is not a valid URL: write {fixed} (or ./{value} for a local folder of that name)"
    if scheme.lower() != "file" and not re.match(r"[^/?#]+", rest[2:]):      # s3:///prefix: no bucket
        return f"{value} names no bucket or host: write {scheme}://BUCKET/prefix"
    return None


def has_userinfo(url: str) -> bool:
    """Does a URL (data_dir, an endpoint_url) carry `user:password@`? Also when the password holds a
    `/`, `#` or `@` (AWS secret keys often hold a `/`), which a URL parser reads as the path: any
    `user:...@` after the scheme counts (the verify24 audit; a `host:port/path@x` is refused too)."""
    url = url.strip()
    return bool(re.match(r"[a-z][a-z0-9+.-]*://[^/?#]*@", url, re.I)
                or re.match(r"[a-z][a-z0-9+.-]*://[^/?#@:]*:[^@]*@", url, re.I))


def check_storage_options(options: dict) -> dict:
    """fsspec options without credentials (the config is recorded in every model bundle): neither a
    secret-looking key, nested ones included, nor a URL with user:password@ in it (endpoint_url)."""
    def items(d: dict) -> list[tuple[str, object]]:      # nested too: client_kwargs: {aws_secret_access_key: ...}
        return [kv for k, v in d.items() for kv in [(str(k), v), *(items(v) if isinstance(v, dict) else [])]]
    found = sorted(k for k, v in items(options) if SECRET_OPTION_RE.search(k)
                   or (isinstance(v, str) and has_userinfo(v)))
    if found:
        raise ValueError(f"{found} look like credentials, which must not live in the config (flows log it "
                         "and record it in run artifacts): set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or "
                         "your store's variables) in the environment")
    return options


STORE_SECRET_MIN_LEN = 16     # AWS key ids are 16-128 characters, secrets 40: shorter values are stand-ins


def remember_store_credentials() -> None:
    """The object store's credentials from the environment, masked wherever they appear (botocore's
    own debug lines print them in request headers). Only values as long as a real credential: the
    usual local stand-ins (`test` for localstack, `testing` for moto, `minioadmin`) are words, and
    masking them would rewrite every path and message that contains them (`.../test/...`)."""
    remember(*(v for v in (os.environ.get(name, "").strip() for name in STORE_SECRET_ENVS)
               if len(v) >= STORE_SECRET_MIN_LEN))


def shown_settings(settings: object) -> str:
    """Config settings (a run's overrides) as run summaries print them: a value under a credential-like
    name, and the password of any URL (`user:password@`, `?password=`), masked. Loading a config
    refuses both, but the summary of a run whose config was refused still printed the overrides as
    given (the arch24 audit: a catalog.url password in the Prefect run-summary artifact)."""
    def masked(value, name: str = ""):
        if isinstance(value, dict):
            return {k: masked(v, str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [masked(v, name) for v in value]
        if name and SECRET_OPTION_RE.search(name):
            return MASK
        if isinstance(value, str):
            # up to the last '@': a password may hold '/', '#' or '@' (the verify24 audit)
            value = re.sub(r"(://[^/?#@:]*:).*@", rf"\1{MASK}@", value)
            return re.sub(r"([?&](?:ssl)?password=)[^&]*", rf"\1{MASK}", value, flags=re.I)
        return value
    return redact(repr(masked(settings)))


def redact(text: str) -> str:
    for value in sorted(_known_secrets, key=len, reverse=True):
        text = text.replace(value, MASK)
    return text


# Characters of outside text that a screen acts on or hides rather than shows, in one table for every
# place that shows such text, each saying what it makes of them: `printable` below (a terminal, a log:
# escapes), the dataset card's Markdown (dataset/card.py: U+FFFD, or left out) and our CSV files
# (manifest.py: U+FFFD). Ranges of code points, first and last.
#
# C0, DEL and C1: ESC starts the sequences that retitle, clear or recolour a terminal; NUL makes a file
# "binary" to grep and GitHub, and some CSV readers stop at it.
CONTROLS = ((0x00, 0x1F), (0x7F, 0x9F))
# Bidi embeddings, overrides and isolates (`Ann\u202eevil` showed as "Annlive"), and the bidi marks.
BIDI_CONTROLS = ((0x202A, 0x202E), (0x2066, 0x2069))
BIDI_MARKS = ((0x200E, 0x200F),)
LINE_SEPARATORS = ((0x2028, 0x2029),)        # Unicode's line and paragraph separators


def code_points(*tables: tuple[tuple[int, int], ...]) -> list[int]:
    """Every code point of the ranges in `tables` (the tables above)."""
    return [c for table in tables for first, last in table for c in range(first, last + 1)]


def characters(*tables: tuple[tuple[int, int], ...]) -> re.Pattern:
    """A pattern matching one character of the ranges in `tables`."""
    return re.compile("[" + "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for t in tables for a, b in t) + "]")


# What a terminal acts on rather than shows: C0 and C1 control characters, DEL, the Unicode line
# separators and the bidirectional marks and overrides.
UNSHOWN = characters(CONTROLS, LINE_SEPARATORS, BIDI_MARKS, BIDI_CONTROLS)
LINES = "\n\t"       # what a message of ours may hold: `keep` for a whole message (a log line, the `mlc:` line)


def printable(text: str, keep: str = "") -> str:
    """`text` with each character UNSHOWN matches, but those in `keep`, written as a Python string literal
    writes it (`\\x1b`, `\\n`, `\\u202e`): text from a remote reply (an API's error, a reply's keys, a host
    name) printed to a terminal or a log cannot drive it (the security26 audit: a reply's key retitled and
    cleared the terminal and wrote fake text in red)."""
    return UNSHOWN.sub(lambda m: m.group() if m.group() in keep else m.group().encode("unicode_escape").decode(), text)


def _escape_controls(record: logging.LogRecord) -> None:
    """A record whose message holds control characters (but a newline or a tab) gets them escaped: in its
    arguments all of them (remote text: a newline there would forge a line of its own), in its format
    string all but LINES. The arguments keep their shape, numbers as numbers (uvicorn's access formatter
    reads them, as _redact_args says); a record that still holds one carries its escaped message."""
    try:
        message = record.getMessage()
    except (TypeError, ValueError):     # logging reports such a call itself
        return
    if printable(message, LINES) == message:
        return

    def shown(value):
        return value if value is None or isinstance(value, (int, float)) else printable(str(value))

    if isinstance(record.args, tuple):
        record.args = tuple(shown(a) for a in record.args)
    elif isinstance(record.args, dict):
        record.args = {k: shown(v) for k, v in record.args.items()}
    record.msg = printable(record.msg, LINES) if isinstance(record.msg, str) else shown(record.msg)
    try:
        again = record.getMessage()
    except (TypeError, ValueError):
        again = None
    if again is None or printable(again, LINES) != again:
        record.msg, record.args = printable(message, LINES), None


def flickr_credentials(local: bool) -> Credentials:
    """The key and secret from FLICKR_API_KEY / FLICKR_API_SECRET.

    For the bundled local server (`local=True`) a placeholder is used when none is set, so the
    offline default needs no key; the real Flickr gets a clear error instead of a confusing
    'Invalid API Key'.
    """
    key = os.environ.get(KEY_ENV, "").strip()
    secret = os.environ.get(SECRET_ENV, "").strip()
    if not key and not local and os.environ.get("PREFECT_API_URL"):     # the real key never goes to the local server
        key, secret = prefect_secret_blocks()
    if not key:
        if local:
            return Credentials(OFFLINE_KEY, OFFLINE_KEY)
        raise MissingCredentials(
            f"{KEY_ENV} is not set: get a key at https://www.flickr.com/services/apps/create/ and "
            f"export {KEY_ENV} and {SECRET_ENV}, or use `source.kind: local` for the offline server")
    if not secret:
        raise MissingCredentials(f"{SECRET_ENV} is not set (flickrapi signs every call with it)")
    remember(key, secret)
    install_log_redaction()
    return Credentials(key, secret)


_factory_installed = False


def _redact_traceback(record: logging.LogRecord) -> None:
    """log.exception(...): the traceback is formatted later, from the exception itself, so a secret in
    the exception's text would pass. When it holds one, the record carries the masked text instead
    (Formatter.format appends `exc_text`) and no exception to format again."""
    if record.exc_info and record.exc_info[0] is not None:
        text = logging.Formatter().formatException(record.exc_info)
        clean = redact(text)
        if clean != text:
            record.exc_info, record.exc_text = None, clean
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def _redact_args(record: logging.LogRecord) -> bool:
    """Mask a secret inside the record's arguments, keeping their shape: some formatters read the
    arguments themselves (uvicorn's access log unpacks five; the secrets21 audit saw a token in a
    request path turn every access line into a "Logging error" traceback when they were dropped).
    True when the masked arguments leave no secret in the message."""
    if isinstance(record.args, tuple):
        args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
    elif isinstance(record.args, dict):
        args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
    else:
        return False
    saved = record.msg, record.args
    record.msg, record.args = redact(str(record.msg)) if isinstance(record.msg, str) else record.msg, args
    try:
        message = record.getMessage()
    except (TypeError, ValueError):
        message = None
    if message is not None and redact(message) == message:
        return True
    record.msg, record.args = saved
    return False


def install_log_redaction() -> None:
    """Mask known secrets in every log record, whichever logger or handler (Prefect's too) emits it,
    and escape the control characters in it (`printable`: remote text a message quotes).

    A record factory sees each record as it is made, so no handler can be missed.
    """
    global _factory_installed
    remember_store_credentials()        # every process that logs: the CLI, flows, workers
    if _factory_installed:
        return
    previous = logging.getLogRecordFactory()

    def make_record(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if _known_secrets:
            try:
                message = record.getMessage()
            except (TypeError, ValueError):    # a call whose arguments do not fit its format string:
                # logging would report it later with the raw arguments, secrets and all
                message = f"{record.msg} (arguments that do not fit: {record.args!r})"
                record.msg, record.args = message, None
            clean = redact(message)
            if clean != message and not _redact_args(record):
                record.msg, record.args = clean, None
            _redact_traceback(record)
        _escape_controls(record)
        return record

    logging.setLogRecordFactory(make_record)
    _factory_installed = True
