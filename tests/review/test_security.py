"""review/security.py on its own: the session cookie (issued by the token, good for SESSION_MAX_AGE_S,
checked by the app: a copied or edited cookie does not outlive its age); the token file (made private,
kept, refused when others can read it) and the token masked in every log line; the Guard every request
passes (a loopback Host, the client header and a same-origin Origin on every action, the token elsewhere),
here in front of a bare app. The review app itself, guarded so over real HTTP, is in test_review_app.py."""

import io
import logging
import os
import stat
import time
import uuid

import pytest
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from fastapi.testclient import TestClient

from mlc_pipeline.review.security import (
    CLIENT_HEADER, COOKIE, SESSION_MAX_AGE_S, TOKEN_ENV, Guard, resolve_token, session_ok, session_value, token_file,
)
from mlc_pipeline.secrets import MASK, redact

TOKEN = "t" * 32


def test_a_session_is_good_until_its_age_then_not():
    now = time.time()
    fresh = session_value(TOKEN)
    assert session_ok(TOKEN, fresh)
    assert TOKEN not in fresh
    old = session_value(TOKEN, int(now) - SESSION_MAX_AGE_S - 1)
    assert not session_ok(TOKEN, old, now=now)
    assert session_ok(TOKEN, session_value(TOKEN, int(now) - SESSION_MAX_AGE_S + 60), now=now)


def test_an_edited_or_foreign_session_is_refused():
    issued, mac = session_value(TOKEN).split(".")
    assert not session_ok(TOKEN, f"{int(issued) + 3600}.{mac}")       # moved forward to live longer
    assert not session_ok("u" * 32, f"{issued}.{mac}")                 # another token's
    assert not session_ok(TOKEN, session_value(TOKEN, int(time.time()) + 3600))   # issued in the future
    for bad in ("", ".", "abc", f"{issued}", f"x{issued}.{mac}", mac, f"\u00b2.{mac}", "9" * 5000 + f".{mac}"):
        assert not session_ok(TOKEN, bad)        # refused, never an exception (the last two were a 500)


def test_the_token_file_is_made_private_kept_and_refused_once_others_can_read_it(tmp_path, monkeypatch):
    monkeypatch.delenv("MLC_REVIEW_TOKEN", raising=False)
    token, where = resolve_token(tmp_path)
    path = token_file(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and str(path) in where and len(token) >= 32
    assert resolve_token(tmp_path)[0] == token, "a second start must reuse the token, not make a new one"
    for mode in (0o640, 0o604):                      # group- or world-readable: another user may hold it
        os.chmod(path, mode)
        with pytest.raises(ValueError, match="readable by other users: chmod 600") as err:
            resolve_token(tmp_path)
        assert token not in str(err.value)
    os.chmod(path, 0o600)
    path.write_text("short\n")
    with pytest.raises(ValueError, match="holds no usable token: delete it"):
        resolve_token(tmp_path)
    assert path.read_text() == "short\n", "a file the user made is never overwritten"


def start_two_at_once(data_dir, barrier, answers):
    barrier.wait()
    try:
        answers.put(("ok", resolve_token(data_dir)[0]))
    except ValueError as exc:
        answers.put(("refused", str(exc)))


def test_two_apps_starting_at_once_both_read_the_one_token_made(tmp_path, monkeypatch):
    """Two processes make the token of a data root without one at the same moment (two `mlc review
    --host` started together: the concurrency28 audit). The file used to be created empty and then
    written, and the second read it in between: in 50 of 100 trials it refused to start, saying to
    delete the first one's token. Both must start, with the same token, the one in the file."""
    import multiprocessing
    monkeypatch.delenv("MLC_REVIEW_TOKEN", raising=False)
    fork = multiprocessing.get_context("fork")
    outcomes = []
    for trial in range(60):
        data_dir = tmp_path / str(trial)
        barrier, answers = fork.Barrier(2), fork.Queue()
        procs = [fork.Process(target=start_two_at_once, args=(data_dir, barrier, answers)) for _ in range(2)]
        for p in procs:
            p.start()
        got = [answers.get(timeout=30) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        outcomes.append((got, token_file(data_dir).read_text().strip()))
        assert not [p.name for p in data_dir.joinpath("review").iterdir() if p.name != "token"]
    wrong = [(trial, got) for trial, (got, kept) in enumerate(outcomes) if got != [("ok", kept)] * 2]
    assert not wrong, f"{len(wrong)} of {len(outcomes)} trials: {wrong[:3]}"


@pytest.mark.parametrize("from_env", [True, False])
def test_the_token_is_masked_in_every_log_line_wherever_it_came_from(tmp_path, monkeypatch, from_env):
    """It is never printed, and a line that would carry it (a request's query, a traceback) shows ***."""
    if from_env:
        monkeypatch.setenv(TOKEN_ENV, f"env-token-{uuid.uuid4().hex}")
    else:
        monkeypatch.delenv(TOKEN_ENV, raising=False)
    token, _ = resolve_token(tmp_path)
    out = io.StringIO()
    log = logging.getLogger(f"test-review-token-{uuid.uuid4().hex}")
    log.addHandler(logging.StreamHandler(out))
    log.propagate = False
    log.warning('"GET /?token=%s HTTP/1.1" 401', token)
    log.warning(f"login failed for Bearer {token}")
    assert out.getvalue() == f'"GET /?token={MASK} HTTP/1.1" 401\nlogin failed for Bearer {MASK}\n'
    assert redact(f"oops {token}") == f"oops {MASK}"


def guarded(token: str | None = None, bound: str | None = None) -> TestClient:
    """A bare app behind the Guard, as review/app.py puts it: GET / and POST /api/action answer "ok"."""
    app = FastAPI()
    app.middleware("http")(Guard(token, bound=bound))
    app.get("/")(lambda: PlainTextResponse("ok"))
    app.get("/login")(lambda: PlainTextResponse("login"))
    app.post("/api/action")(lambda: PlainTextResponse("ok"))
    return TestClient(app, base_url="http://127.0.0.1:8777", follow_redirects=False)


ACTION = {CLIENT_HEADER: "tab-1"}


def test_loopback_needs_a_loopback_host_any_port():
    """DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1 sends its own Host."""
    client = guarded()
    for host in ("127.0.0.1:8777", "localhost:9000", "[::1]:8777", "127.0.0.1", "localhost"):
        assert client.get("/", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example", "evil.example:8777", "127.0.0.1.evil.example", "127.0.0.2:8777", "[::2]:8777"):
        res = client.get("/", headers={"Host": host})
        assert res.status_code == 400 and "unexpected Host" in res.text, host
    bound = guarded(bound="127.0.0.2")              # an app bound to another loopback address answers there
    assert bound.get("/", headers={"Host": "127.0.0.2:8777"}).status_code == 200
    assert bound.get("/", headers={"Host": "127.0.0.3:8777"}).status_code == 400


def test_an_action_needs_the_client_header_and_no_other_origin():
    """A form on another site cannot send the header; a cross-origin fetch with it needs a preflight the
    app never grants, and a browser names its page's Origin on every POST."""
    client = guarded()
    res = client.post("/api/action")
    assert res.status_code == 403 and CLIENT_HEADER in res.text
    for origin in ("http://evil.example", "http://127.0.0.1:9999", "http://localhost:8777", "null"):
        res = client.post("/api/action", headers={**ACTION, "Origin": origin})
        assert res.status_code == 403 and "cross-origin" in res.text, origin
    assert client.post("/api/action", headers={**ACTION, "Origin": "http://127.0.0.1:8777"}).text == "ok"
    assert client.post("/api/action", headers=ACTION).text == "ok"      # a script: no Origin at all
    assert client.get("/").text == "ok"                                  # pages need neither


def test_with_a_token_every_page_and_action_needs_it_and_actions_still_the_header():
    token = "k" * 32
    client = guarded(token, bound="0.0.0.0")
    client.headers["Host"] = "review.lan:8777"          # any Host: the token guards it
    page = client.get("/")
    assert page.status_code == 303 and page.headers["location"] == "/login"
    assert client.get("/login").text == "login"
    assert client.post("/api/action", headers=ACTION).status_code == 401
    assert client.post("/api/action", headers={**ACTION, "Authorization": "Bearer " + "x" * 32}).status_code == 401
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.get("/", headers=bearer).text == "ok"
    assert client.post("/api/action", headers={**ACTION, **bearer}).text == "ok"
    assert client.post("/api/action", headers=bearer).status_code == 403          # the header, token or not
    client.cookies.set(COOKIE, session_value(token))
    assert client.post("/api/action", headers=ACTION).text == "ok"
    client.cookies.set(COOKIE, session_value(token, int(time.time()) - SESSION_MAX_AGE_S - 1))
    assert client.post("/api/action", headers=ACTION).status_code == 401


def test_every_answer_forbids_framing_and_sniffing():
    client = guarded()
    for res in (client.get("/"), client.get("/", headers={"Host": "evil.example"}), client.post("/api/action")):
        assert res.headers["X-Frame-Options"] == "DENY" and res.headers["X-Content-Type-Options"] == "nosniff"
        assert "frame-ancestors 'none'" in res.headers["Content-Security-Policy"]
