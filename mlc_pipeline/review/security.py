"""Who may use the review app.

- Loopback (the default): no token, but requests must name a loopback Host (127.0.0.1, localhost,
  [::1] or the loopback address the app is bound to, such as 127.0.0.2), any port (a web page
  elsewhere cannot reach the app through DNS rebinding) and every action must carry the app's own header
  (a form on another site cannot send it, and a cross-origin fetch with it needs a CORS preflight,
  which the app never grants).
- Any other address: a token is required. It comes from MLC_REVIEW_TOKEN, or is generated and
  written to <data_dir>/review/token (mode 0600). It is never printed or logged: the startup line
  names the file, and the token is registered with secrets.redact for every log record. The login
  form sets an HttpOnly, SameSite=Strict cookie holding when it was issued and an HMAC of that time
  under the token, not the token itself; it is good for SESSION_MAX_AGE_S (checked by the app, not
  only by the browser: a copied cookie stops working too). Scripts may send `Authorization: Bearer
  <token>`.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import ipaddress
import os
import re
import secrets as pysecrets
import time
from pathlib import Path

from fastapi import Request
from fastapi.responses import PlainTextResponse, RedirectResponse

from mlc_pipeline.fsutil import temp_beside
from mlc_pipeline.secrets import install_log_redaction, remember

TOKEN_ENV = "MLC_REVIEW_TOKEN"
COOKIE = "mlc_review_session"
CLIENT_HEADER = "x-mlc-client"
OPEN_PATHS = ("/login", "/static/", "/favicon.ico")
SESSION_MAX_AGE_S = 12 * 3600      # a working day: then the token again


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url_host(host: str) -> str:
    """`host` as a URL (and a Host header) writes it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def token_file(data_dir: Path) -> Path:
    return Path(data_dir) / "review" / "token"


def resolve_token(data_dir: Path) -> tuple[str, str]:
    """(token, where it came from). The file is created with mode 0600 and never overwritten."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        if len(token) < 16:
            raise ValueError(f"{TOKEN_ENV} is too short: use at least 16 characters")
        where = f"the {TOKEN_ENV} environment variable"
    else:
        path = token_file(data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not create_token_file(path) and path.stat().st_mode & 0o077:
            raise ValueError(f"{path} is readable by other users: chmod 600 it (or delete it for a new token)")
        token = path.read_text().strip()
        if len(token) < 16:
            raise ValueError(f"{path} holds no usable token: delete it and a new one is made")
        where = f"the file {path}"
    remember(token)
    install_log_redaction()
    return token, where


def create_token_file(path: Path) -> bool:
    """A new token at `path` (mode 0600) unless a file is there; True when this call made it. It appears
    whole: written beside it, then hard-linked into place, which fails if the file exists, so two apps
    starting at once both read the one that won. Created empty then written, the second read it empty
    and refused to start, saying to delete the first one's token (the concurrency28 audit). Where the
    file system has no hard links, it is created in place (that window open)."""
    tmp = temp_beside(path)
    try:
        write_private(tmp, pysecrets.token_urlsafe(32) + "\n")
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        try:
            write_private(path, pysecrets.token_urlsafe(32) + "\n")
            return True
        except FileExistsError:
            return False
    finally:
        tmp.unlink(missing_ok=True)


def write_private(path: Path, text: str) -> None:
    """`text` in a new file that only its owner can read (FileExistsError if there is one)."""
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(text)


def session_value(token: str, issued: int | None = None) -> str:
    """The cookie: `<issued>.<HMAC(token, issued)>`, so that the app can tell its age and no one can
    change it without the token."""
    issued = int(time.time()) if issued is None else issued
    return f"{issued}." + hmac.new(token.encode(), f"mlc-review-session:{issued}".encode(), hashlib.sha256).hexdigest()


def session_ok(token: str, cookie: str, now: float | None = None) -> bool:
    """A cookie this token issued less than SESSION_MAX_AGE_S ago."""
    issued, _, _ = cookie.partition(".")
    if not re.fullmatch(r"[0-9]{1,12}", issued):      # str.isdigit() also takes '²' and 5000 digits
        return False
    age = (time.time() if now is None else now) - int(issued)
    return -60 <= age <= SESSION_MAX_AGE_S and hmac.compare_digest(cookie.encode(),
                                                                    session_value(token, int(issued)).encode())


# On every response. Without them another site could frame a page (on loopback there is no login) and
# turn a click or a key (r, s, a, d act on the image shown) into a same-origin action: clickjacking.
FRAMING_HEADERS = {"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'",
                   "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
# On every response that holds bytes from elsewhere (a collected file, a thumbnail of one): whatever they
# hold, the browser runs nothing of them, even when it is made to open one as a page (the security26
# audit: a GIF with HTML after it, served as "image/gif, text/html", ran script in the app's origin).
FILE_HEADERS = {"Content-Security-Policy": "default-src 'none'; sandbox", "X-Content-Type-Options": "nosniff"}


class Guard:
    """The checks every request goes through (an HTTP middleware)."""

    LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")

    def __init__(self, token: str | None, bound: str | None = None):
        """`bound`: the address the app listens on; a loopback one (127.0.0.2) is a loopback name too."""
        self.token = token
        self.loopback_names = set(self.LOOPBACK_NAMES) | ({url_host(bound)} if bound and is_loopback(bound) else set())

    def loopback_host(self, host: str) -> bool:
        """The Host header names loopback (any port: an SSH tunnel may forward another local port)."""
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") and "]:" in host else host
        return name in self.loopback_names

    def token_ok(self, given: str | None) -> bool:
        return bool(self.token and given) and hmac.compare_digest(given.encode(), self.token.encode())

    def authenticated(self, request: Request) -> bool:
        if self.token is None:
            return True
        auth = request.headers.get("authorization", "")
        if auth.startswith("Bearer ") and self.token_ok(auth[7:].strip()):
            return True
        return session_ok(self.token, request.cookies.get(COOKIE, ""))

    async def __call__(self, request: Request, call_next):
        response = await self.checked(request, call_next)
        own = response.headers.get("content-security-policy")
        response.headers.update(FRAMING_HEADERS)
        if own:         # a file's sandbox (FILE_HEADERS) stays, with the framing rule after it
            response.headers["Content-Security-Policy"] = f"{own}; {FRAMING_HEADERS['Content-Security-Policy']}"
        return response

    async def checked(self, request: Request, call_next):
        if self.token is None and not self.loopback_host(request.headers.get("host", "")):
            return PlainTextResponse("mlc review: unexpected Host header (loopback only)", status_code=400)
        path = request.url.path
        if not path.startswith(OPEN_PATHS) and not self.authenticated(request):
            if request.method == "GET":
                return RedirectResponse("/login", status_code=303)
            return PlainTextResponse("mlc review: log in first (token required)", status_code=401)
        if request.method == "POST" and path.startswith("/api/"):
            if not request.headers.get(CLIENT_HEADER):
                return PlainTextResponse(f"mlc review: actions need the {CLIENT_HEADER} header", status_code=403)
            origin = request.headers.get("origin")
            if origin and origin.split("://", 1)[-1] != request.headers.get("host"):
                return PlainTextResponse("mlc review: cross-origin action refused", status_code=403)
        return await call_next(request)
