"""The review app's session cookie: issued by the token, good for SESSION_MAX_AGE_S, checked by the app
(a copied or edited cookie does not outlive its age). The login over HTTP is in test_review_app.py."""

import time

from mlc_pipeline.review.security import SESSION_MAX_AGE_S, session_ok, session_value

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
