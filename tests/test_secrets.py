"""Known secrets are masked in every log record (secrets.install_log_redaction), tracebacks included."""

from __future__ import annotations

import io
import logging
import uuid

from mlc_pipeline.secrets import MASK, install_log_redaction, redact, remember, shown_settings


def access_formatter() -> logging.Formatter:
    """uvicorn's access-line formatter, which reads a record's arguments itself."""
    from uvicorn.logging import AccessFormatter
    return AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False)


def _logger(formatter: logging.Formatter | None = None) -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter or logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger(f"test-secrets-{uuid.uuid4().hex}")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    return log, out


def test_a_secret_is_masked_in_messages_arguments_and_tracebacks():
    secret = f"KEY{uuid.uuid4().hex}"
    remember(secret)
    install_log_redaction()
    log, out = _logger()
    log.info("plain %s", secret)
    try:
        raise RuntimeError(f"auth failed for key {secret}")
    except RuntimeError:
        log.exception("call failed")      # the traceback holds it: formatted from the exception later
    text = out.getvalue()
    assert secret not in text and text.count(MASK) == 2, text
    assert "Traceback (most recent call last)" in text and "RuntimeError: auth failed for key" in text


def test_a_log_call_with_arguments_that_do_not_fit_neither_raises_nor_leaks(capsys):
    """The factory formats each message to look for secrets: a bad call raised TypeError in the
    caller (logging itself only reports it), and logging's report prints the raw arguments."""
    secret = f"KEY{uuid.uuid4().hex}"
    remember(secret)
    install_log_redaction()
    log, out = _logger()
    log.info("count %d of %s", "not a number", secret)
    text = out.getvalue() + capsys.readouterr().err
    assert "count %d of %s" in text and "not a number" in text and secret not in text


def test_the_local_server_never_gets_the_flickr_key_from_prefect_blocks(monkeypatch):
    """Under a Prefect server, the key comes from its secret blocks when the environment has none;
    the offline default (the bundled local server) read them too and sent the real key there."""
    from mlc_pipeline import secrets
    monkeypatch.delenv(secrets.KEY_ENV, raising=False)
    monkeypatch.delenv(secrets.SECRET_ENV, raising=False)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    asked = []
    monkeypatch.setattr(secrets, "prefect_secret_blocks", lambda: asked.append(1) or ("real-key-123", "real-secret"))
    assert secrets.flickr_credentials(local=True).key == secrets.OFFLINE_KEY and asked == []
    assert secrets.flickr_credentials(local=False).key == "real-key-123" and asked == [1]


def test_the_object_stores_credentials_from_the_environment_are_masked(monkeypatch):
    """Only the Flickr keys, PGPASSWORD and the review token were registered: botocore's debug lines
    printed the session token and the key id of AWS_* in clear."""
    values = {name: f"{name[:4]}{uuid.uuid4().hex}" for name in
              ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    install_log_redaction()
    log, out = _logger()
    log.info("headers: %s", {"X-Amz-Security-Token": values["AWS_SESSION_TOKEN"].encode(),
                             "Authorization": f"AWS4-HMAC-SHA256 Credential={values['AWS_ACCESS_KEY_ID']}/x"})
    log.info("secret %s", values["AWS_SECRET_ACCESS_KEY"])
    text = out.getvalue()
    assert not any(v in text for v in values.values()) and text.count(MASK) == 3, text


def test_stand_in_store_credentials_are_not_masked_as_words(monkeypatch):
    """localstack's `test`, moto's `testing` and MinIO's `minioadmin` are no secrets, and masked as
    substrings they rewrote every path and message holding the word (`.../la***/***/x.jpg`)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "minioadmin")
    install_log_redaction()
    assert redact("/data/latest/testing/minioadmin.jpg") == "/data/latest/testing/minioadmin.jpg"


def test_a_secret_in_an_access_log_line_keeps_the_arguments_uvicorn_reads(capsys):
    """uvicorn's access formatter unpacks the record's five arguments itself. Masking dropped them
    (args = None), so a review token in a request path (`/?token=...`) turned every access line into
    a "Logging error" traceback on stderr (the secrets21 audit): the arguments are masked in place."""
    secret = f"TOKEN{uuid.uuid4().hex}"
    remember(secret)
    install_log_redaction()
    log, out = _logger(access_formatter())
    log.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", f"/?token={secret}", "1.1", 200)
    text, err = out.getvalue(), capsys.readouterr().err
    assert "Logging error" not in err and secret not in text + err
    assert f'"GET /?token={MASK} HTTP/1.1" 200' in text, text


def test_a_secret_is_masked_as_a_url_writes_it_too():
    """A review token with characters a URL encodes appeared percent-encoded in access lines, unmasked
    (the verify21 audit)."""
    secret = f"to ken/{uuid.uuid4().hex}+x#y"
    remember(secret)
    from urllib.parse import quote, quote_plus
    for form in (secret, quote(secret, safe=""), quote_plus(secret), quote(secret)):
        assert redact(f"GET /?token={form} HTTP/1.1") == f"GET /?token={MASK} HTTP/1.1"


def test_settings_printed_in_a_run_summary_never_show_a_password():
    """A flow run's overrides are printed in its summary artifact, also when the config refused them:
    a catalog.url password reached the Prefect artifact (the arch24 audit)."""
    overrides = {"catalog": {"url": "postgresql://mlc:hunter2pw@db.example:5432/mlc?sslpassword=s3cr3tpp&sslmode=require"},
                 "storage_options": {"client_kwargs": {"aws_secret_access_key": "abcdEFGH1234"}, "anon": False},
                 "data_dir": "s3://u:pw12345@bucket/x", "train": {"epochs": 2}, "classes": {"kite": {"count": 5}}}
    shown = shown_settings(overrides)
    for secret in ("hunter2pw", "s3cr3tpp", "abcdEFGH1234", "pw12345"):
        assert secret not in shown, shown
    assert "postgresql://mlc:***@db.example:5432/mlc?sslpassword=***&sslmode=require" in shown
    assert "'aws_secret_access_key': '***'" in shown and "s3://u:***@bucket/x" in shown
    assert "'train': {'epochs': 2}" in shown and "'kite': {'count': 5}" in shown and "'anon': False" in shown
    # a password holding '/', '#' or '@' (an AWS secret key often holds a '/'): masked whole (verify24 audit)
    for url in ("s3://AKIA:wJal/K7MD/bPxRfiCY@bucket/x", "postgresql://u:hun#ter2@db/mlc", "postgresql://u:p@ss@db/mlc",
                "postgresql://u@db/mlc?password=pa#ss&sslmode=require"):
        shown = shown_settings({"x": url})
        assert not any(part in shown for part in ("K7MD", "bPxRfiCY", "ter2", "ss@db", "pa#ss")), shown
        assert "***" in shown and ("@bucket/x" in shown or "@db/mlc" in shown)


def test_control_characters_in_a_log_line_are_escaped_and_the_arguments_keep_their_shape(capsys):
    """The security26 audit: text from a hostile reply (a host name, a reply's keys, an error) reached
    the terminal as raw escape sequences, which retitled and cleared it and wrote fake text in red.
    Every log record's control characters are escaped as Python writes them (a newline or a tab of a
    message of ours stays); a string argument is escaped in place (uvicorn's access formatter reads the
    arguments), an exception argument through the whole message."""
    install_log_redaction()
    evil = "\x1b]0;TITLE-PWNED\x07\x1b[2J\x1b[31mfake: all good\r\n\u202eevil\x85"
    escaped = "\\x1b]0;TITLE-PWNED\\x07\\x1b[2J\\x1b[31mfake: all good\\r\\n\\u202eevil\\x85"
    log, out = _logger()
    log.warning("image host %s answers again\n\tafter %d errors", evil, 3)
    log.warning("retry: %s", ValueError(evil))
    log.warning({"not": evil})          # a message that is no string: its text, escaped
    lines = out.getvalue().splitlines()
    assert lines == [f"WARNING image host {escaped} answers again", "\tafter 3 errors", f"WARNING retry: {escaped}",
                     "WARNING {'not': '\\x1b]0;TITLE-PWNED\\x07\\x1b[2J\\x1b[31mfake: all good\\r\\n\\u202eevil\\x85'}"
                     ], lines
    access, out = _logger(access_formatter())
    access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", f"/{evil}", "1.1", 200)
    assert out.getvalue().startswith(f'127.0.0.1:5000 - "GET /{escaped} HTTP/1.1" 200'), out.getvalue()
    assert "Logging error" not in capsys.readouterr().err


def test_the_terminal_the_card_and_the_csv_files_read_one_table_of_unshown_characters():
    """secrets.UNSHOWN (`printable`: a terminal, a log) and the card's UNSEEN (Markdown) named the same
    control and bidi ranges in two tables, free to drift; the CSV files of ours had none. One table now
    (secrets.CONTROLS, BIDI_CONTROLS, ...), each keeping what it makes of them: every character of it
    escaped by `printable`, gone from the card's text (U+FFFD, a space or nothing) and, the controls
    but a tab or line break, U+FFFD in a CSV cell."""
    from mlc_pipeline.dataset.card import UNSEEN, table_cell
    from mlc_pipeline.manifest import CSV_UNSAFE, spreadsheet_safe
    from mlc_pipeline.secrets import (BIDI_CONTROLS, BIDI_MARKS, CONTROLS, LINE_SEPARATORS, UNSHOWN, code_points,
                                      printable)
    unshown = {chr(c) for c in range(0x110000) if UNSHOWN.match(chr(c))}
    assert unshown == set(map(chr, code_points(CONTROLS, LINE_SEPARATORS, BIDI_MARKS, BIDI_CONTROLS)))
    assert set(UNSEEN) == {c for c in code_points(CONTROLS, BIDI_CONTROLS) if not chr(c).isspace()}
    assert set(CSV_UNSAFE) == {c for c in code_points(CONTROLS) if chr(c) not in "\t\n\r"}
    for c in map(chr, code_points(CONTROLS, BIDI_CONTROLS)):
        text = f"a{c}b"
        assert c not in printable(text) and c not in table_cell(text), repr(c)
        assert table_cell(text) in ("a\ufffdb", "a b", "ab"), repr(c)
    assert {c for c in map(chr, code_points(CONTROLS)) if c in spreadsheet_safe({"title": f"a{c}b"})["title"]} == \
        set("\t\n\r")
