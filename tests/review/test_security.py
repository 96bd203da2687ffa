"""The review app's session cookie: issued by the token, good for SESSION_MAX_AGE_S, checked by the app
(a copied or edited cookie does not outlive its age). The login over HTTP is in test_review_app.py.
The token file: made private, kept, refused when others can read it."""

import os
import stat
import time

import pytest

from mlc_pipeline.review.security import SESSION_MAX_AGE_S, resolve_token, session_ok, session_value, token_file

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
