"""The Flickr side of flows/runtime.py: the `mlc-flickr` concurrency slot that serialises collects (its
log lines, a renamed limit nobody created, a failed look at it), and the key and secret from Prefect
Secret blocks. In-process under `prefect_test_harness`."""

from __future__ import annotations

from prefect.client.orchestration import get_client


def test_collect_says_when_it_waits_for_the_flickr_slot(harness, caplog):
    """A collect that finds the mlc-flickr slot held (another collect, or a crashed run's lease) logs
    that it waits and why, then how long it waited; the lease is Prefect's minimum (renewed while held)."""
    import logging
    import threading

    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency

    from flows.runtime import FLICKR_LEASE_S, FLICKR_LIMIT, flickr_slot

    from prefect.exceptions import ObjectAlreadyExists

    assert FLICKR_LEASE_S == 60
    with get_client(sync_client=True) as client:
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=FLICKR_LIMIT, limit=1))
        except ObjectAlreadyExists:     # a flow run of an earlier test created it (its collect does)
            pass
    held, release = threading.Event(), threading.Event()

    def other_collect():
        with concurrency(FLICKR_LIMIT, occupy=1, lease_duration=60):
            held.set()
            release.wait(30)

    other = threading.Thread(target=other_collect)
    other.start()
    try:
        assert held.wait(30)
        threading.Timer(2, release.set).start()
        logger = logging.getLogger("test-flickr-slot")
        with caplog.at_level(logging.INFO, logger="test-flickr-slot"):
            with flickr_slot(logger):
                pass
        assert "waiting for the 'mlc-flickr' concurrency slot" in caplog.text and "within 60 s" in caplog.text
        assert "got the 'mlc-flickr' slot after" in caplog.text
    finally:
        release.set()
        other.join(timeout=30)
        with get_client(sync_client=True) as client:      # the next collect creates it again
            client.delete_global_concurrency_limit_by_name(FLICKR_LIMIT)


def test_a_renamed_flickr_limit_that_nobody_created_still_serialises_collects(harness, monkeypatch, caplog):
    """MLC_FLICKR_CONCURRENCY_LIMIT renames the limit; prefect_local.sh created only `mlc-flickr`, and a
    limit that does not exist was skipped (strict=False), so two collects ran at once (the docs27
    audit). Now the first collect creates it (limit 1), the second waits for the first."""
    import logging
    import threading
    import time
    import uuid

    from flows.runtime import flickr_slot

    name = f"flickr-renamed-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("MLC_FLICKR_CONCURRENCY_LIMIT", name)
    spans: list[tuple[float, float]] = []
    logger = logging.getLogger("test-flickr-renamed")

    def collect():
        with flickr_slot(logger):
            start = time.monotonic()
            time.sleep(1.5)
            spans.append((start, time.monotonic()))

    try:
        with caplog.at_level(logging.INFO, logger="test-flickr-renamed"):
            collects = [threading.Thread(target=collect) for _ in range(2)]
            for c in collects:
                c.start()
            for c in collects:
                c.join(timeout=90)
        assert len(spans) == 2, caplog.text
        (_, first_end), (second_start, _) = sorted(spans)
        assert second_start >= first_end, spans          # one after the other, never together
        assert f"created the global concurrency limit '{name}' (limit 1)" in caplog.text
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(name)
        assert (limit.limit, limit.active) == (1, True)
    finally:
        with get_client(sync_client=True) as client:      # when created (not before the fix)
            if name in {gcl.name for gcl in client.read_global_concurrency_limits(limit=200)}:
                client.delete_global_concurrency_limit_by_name(name)


def test_credentials_from_prefect_secret_blocks(harness, monkeypatch):
    """With no environment variables, the key and secret come from Prefect Secret blocks (and are
    masked like any other secret)."""
    from prefect.blocks.system import Secret
    from prefect.settings import PREFECT_API_URL

    from mlc_pipeline.secrets import KEY_BLOCK, SECRET_BLOCK, flickr_credentials, redact

    monkeypatch.delenv("FLICKR_API_KEY", raising=False)
    monkeypatch.delenv("FLICKR_API_SECRET", raising=False)
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    Secret(value="block-key-13579").save(KEY_BLOCK, overwrite=True)
    Secret(value="block-secret-24680").save(SECRET_BLOCK, overwrite=True)
    creds = flickr_credentials(local=False)
    assert (creds.key, creds.secret) == ("block-key-13579", "block-secret-24680")
    assert "block-key-13579" not in repr(creds) and redact("k=block-key-13579") == "k=***"


def test_a_failed_look_at_the_flickr_limit_does_not_fail_the_collect(monkeypatch, caplog):
    """The look before taking the slot is for the log line only: an API error there (a timeout, a 5xx)
    is a warning, and the slot is taken as before (`concurrency(strict=False)` tolerates the same)."""
    import logging

    import prefect.client.orchestration as orchestration

    from flows.runtime import flickr_slot_busy

    def unreachable(*args, **kwargs):
        raise TimeoutError("the API did not answer")

    monkeypatch.setattr(orchestration, "get_client", unreachable)
    with caplog.at_level(logging.WARNING):
        assert flickr_slot_busy() is False
    assert "could not read the 'mlc-flickr' limit (TimeoutError: the API did not answer)" in caplog.text
