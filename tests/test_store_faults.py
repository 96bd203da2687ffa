"""An S3 endpoint that resets its connections in the middle of a publish (the scale26 audit, finding 3):
~2,000 asyncio "Task exception was never retrieved" tracebacks (aiohttp's abandoned request writers)
reached the terminal before the one-line error. A TCP proxy in front of moto resets every connection
once a given number of bytes went through it. An endpoint that accepts connections and never answers
(the beyond28 audit, finding 1) hung a command ~7 minutes, silently: mlc set no timeouts or retry bound."""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import time
from types import SimpleNamespace

import pytest
import yaml

from helpers import ENV, MLC, Gateway, Listener
from mlc_pipeline.catalog import Catalog, Found
from mlc_pipeline.config import load_config

pytestmark = pytest.mark.slow


class ResettingProxy(Gateway):
    """Loopback TCP proxy to `port`: passes bytes both ways until `limit` bytes went upstream in all,
    then resets (RST) every connection, open or new."""

    def __init__(self, port: int, limit: int):
        self.limit, self.sent = limit, 0
        super().__init__(port, backlog=256)

    def tripped(self, sent: int = 0) -> bool:
        with self.lock:
            self.sent += sent
            return self.sent >= self.limit

    @staticmethod
    def hang_up(*socks: socket.socket) -> None:
        """A reset (RST), not a close."""
        for s in socks:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            except OSError:         # closed by the other direction's thread already
                pass

    def admit(self, client: socket.socket) -> bool:
        if not self.tripped():
            return True
        self.hang_up(client)
        return False

    def request(self, conn: SimpleNamespace, data: bytes) -> None:
        if self.tripped(len(data)):
            raise ConnectionResetError("over the limit")

    def answer(self, conn: SimpleNamespace, data: bytes) -> None:
        if self.tripped():
            raise ConnectionResetError("over the limit")


def found(photo_id: str) -> Found:
    return Found("flickr", photo_id, "train", "cat", "cat", "http://x/a.jpg", "url_c", 1, 1, 4, "CC", "o", "o", "t",
                 None, None, "")


def test_connections_reset_mid_upload_give_the_one_line_only(s3_server, tmp_path):
    import s3fs
    s3fs.S3FileSystem(endpoint_url=s3_server).mkdir("mlc-resets")
    proxy = ResettingProxy(int(s3_server.rsplit(":", 1)[1]), limit=1_000_000)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": "s3://mlc-resets/p", "cache_dir": str(tmp_path / "cache"),
        "storage_options": {"endpoint_url": proxy.address},
        "classes": {"cat": {"queries": ["cat"], "count": 1}}, "other": {"queries": ["x"], "count": 1}}))
    cfg = load_config(config)
    with Catalog(cfg.catalog_path) as c:        # 400 downloads of 20 KB each, not published yet
        c.upsert_found([found(f"{i}") for i in range(400)], "run")
        for i in range(400):
            path = cfg.layout.raw("flickr") / f"{i % 100:02d}" / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(20_000))
            c.set_status(c.get_by_photo("flickr", f"{i}")["id"], "downloaded", None, "run", "download",
                         file_path=str(path))
    creds = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    try:        # a takedown: its publish uploads the files, and the proxy resets them after ~1 MB
        res = subprocess.run(MLC + ["remove", "-c", str(config), "--photo-id", "0", "--reason", "owner"],
                             env={**ENV, **creds}, text=True, capture_output=True, timeout=300)
    finally:
        proxy.close()
    assert proxy.tripped(), "the proxy never reset a connection: the test tests nothing"
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Task exception was never retrieved" not in res.stderr and "Traceback" not in res.stderr, \
        f"{res.stderr.count('Task exception was never retrieved')} tracebacks:\n{res.stderr[-3000:]}"
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("mlc: object store s3://mlc-resets/p: ") and len(lines) <= 3, res.stderr[-3000:]


class SilentServer(Listener):
    """Loopback TCP server that accepts every connection and never sends a byte (a stalled gateway)."""

    def __init__(self):
        self.held: list[socket.socket] = []
        super().__init__()

    def connected(self, client: socket.socket) -> None:
        self.held.append(client)

    def close(self) -> None:
        super().close()
        for conn in self.held:
            conn.close()


def test_a_store_that_accepts_and_never_answers_ends_in_one_line_soon(s3_server, tmp_path):
    """With only read_timeout set by the user (1 s), mlc's bounded retries apply: ~4 tries, not s3fs's 5
    times botocore's 5 (over a minute at 1 s; ~7 minutes at the 15 s default). And a user who sets
    nothing gets bounded defaults on the client itself."""
    from mlc_pipeline import objectstore, s3client
    silent = SilentServer()
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": "s3://mlc-stalled/p", "cache_dir": str(tmp_path / "cache"),
        "storage_options": {"endpoint_url": silent.address, "config_kwargs": {"read_timeout": 1}},
        "classes": {"cat": {"queries": ["cat"], "count": 1}}, "other": {"queries": ["x"], "count": 1}}))
    creds = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    start = time.monotonic()
    try:
        res = subprocess.run(MLC + ["inspect", "-c", str(config)], env={**ENV, **creds}, text=True,
                             capture_output=True, timeout=90)
    finally:
        silent.close()
    took = time.monotonic() - start
    assert silent.held, "nothing connected to the silent server: the test tests nothing"
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-3000:]
    assert f"the object store at {silent.address} accepted the connection but did not answer" in lines[0], lines[0]
    assert "config_kwargs" in lines[0], lines[0]
    assert took < 25, f"{took:.0f} s before the line"
    # the defaults a user gets with no config_kwargs, and what a user's key replaces: on the client itself
    for given, read_timeout in (({}, s3client.S3_CLIENT["read_timeout"]), ({"read_timeout": 300}, 300)):
        fs = objectstore.Store("s3://mlc-stalled/p", {"endpoint_url": s3_server, "config_kwargs": given}).fs
        config_ = fs.connect().meta.config
        assert (config_.read_timeout, config_.connect_timeout) == (read_timeout, s3client.S3_CLIENT["connect_timeout"])
        assert config_.retries == s3client.S3_CLIENT["retries"] and fs.retries == s3client.S3FS_TRIES


SLOW_DOWN = b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
SLOW_DOWN_BODY = b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"


class ThrottlingGateway(Gateway):
    """Its first `throttled` GET requests are answered 503 SlowDown (S3's answer to a client over its
    request rate), and their connection closed; the others pass to the server. (A client sends a
    request only once the last answer is read, so nothing of the server's is in flight then.)"""

    def __init__(self, port: int, throttled: int):
        self.left, self.throttled, self.passed = throttled, 0, 0
        super().__init__(port)

    def request(self, conn: SimpleNamespace, data: bytes) -> None:
        if not data.startswith(b"GET "):
            return
        with self.lock:
            throttle = self.left > 0
            self.left, self.throttled, self.passed = self.left - throttle, self.throttled + throttle, self.passed + (not throttle)
        if throttle:
            conn.client.sendall(SLOW_DOWN % (len(SLOW_DOWN_BODY), SLOW_DOWN_BODY))
            raise ConnectionAbortedError("throttled")


def test_s3fs_tries_are_the_users_to_set_and_each_store_keeps_its_own(s3_server):
    """s3fs tries each call around botocore's tries, 2 times by mlc's choice; a gateway that throttles
    (SlowDown) longer than that needs more, and until 2026-12-07 no option could give them (review28 #7).
    They were also set on fsspec's cached S3FileSystem, which every S3 user in the process shares."""
    import s3fs

    from mlc_pipeline import objectstore, s3client
    direct = s3fs.S3FileSystem(endpoint_url=s3_server)
    direct.mkdir("mlc-throttled")
    direct.pipe("mlc-throttled/p/x", b"hello")
    port, url = int(s3_server.rsplit(":", 1)[1]), "s3://mlc-throttled/p"
    no_botocore_retry = {"retries": {"total_max_attempts": 1}}     # s3fs's tries alone
    gateway = ThrottlingGateway(port, throttled=2)
    mlcs = objectstore.Store(url, {"endpoint_url": gateway.address, "config_kwargs": no_botocore_retry})
    try:
        with pytest.raises(OSError, match="reduce your request rate"):
            mlcs.read_text("x")
    finally:
        gateway.close()
    assert (gateway.throttled, gateway.passed, mlcs.fs.retries) == (2, 0, s3client.S3FS_TRIES)
    # on the project's own instance: fsspec's shared S3FileSystem instances keep s3fs's default
    assert all(fs.retries == s3fs.S3FileSystem.retries for fs in s3fs.S3FileSystem._cache.values())

    gateway = ThrottlingGateway(port, throttled=2)
    users = objectstore.Store(url, {"endpoint_url": gateway.address, "config_kwargs": no_botocore_retry,
                                    "s3fs_retries": 3})
    try:
        assert users.read_text("x") == "hello"
    finally:
        gateway.close()
    assert (gateway.throttled, gateway.passed) == (2, 1)
    assert (mlcs.fs.retries, users.fs.retries) == (s3client.S3FS_TRIES, 3)     # each store keeps its own
    with pytest.raises(objectstore.ObjectStoreError, match="s3fs_retries must be a whole number, 1 or more, not 'x'"):
        objectstore.Store("s3://mlc-throttled/p", {"endpoint_url": s3_server, "s3fs_retries": "x"})


class SlowCompletion(Gateway):
    """Holds each CompleteMultipartUpload's answer `delay` s (a gateway that joins the parts before it says
    anything, and keeps nothing alive meanwhile)."""

    def __init__(self, port: int, delay: float):
        self.delay, self.held = delay, 0
        super().__init__(port)

    def request(self, conn: SimpleNamespace, data: bytes) -> None:
        if re.match(rb"POST [^ ]*uploadId=", data):        # not UploadPart (PUT), not Abort (DELETE)
            conn.completing = True

    def answer(self, conn: SimpleNamespace, data: bytes) -> None:
        if getattr(conn, "completing", False):
            conn.completing = False
            self.held += 1
            time.sleep(self.delay)


def test_a_slow_multipart_completion_is_waited_for_not_cut_by_read_timeout(s3_server, tmp_path):
    """A large upload ends with CompleteMultipartUpload, whose answer can take minutes; a gateway that
    sends nothing meanwhile had it cut by read_timeout (20 s), and the tries after it found the upload
    completed and gone: `The specified upload does not exist` (review28 #7). It gets its own read timeout,
    storage_options.complete_read_timeout (300 s). Here read_timeout is 1 s and the answer takes 3 s."""
    import s3fs

    from mlc_pipeline import objectstore
    s3fs.S3FileSystem(endpoint_url=s3_server).mkdir("mlc-completing")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 << 20))       # 3 parts of 5 MiB at most (S3's least, but for the last)
    for complete_read_timeout in (None, 1):
        gateway = SlowCompletion(int(s3_server.rsplit(":", 1)[1]), delay=3)
        options = {"endpoint_url": gateway.address, "config_kwargs": {"read_timeout": 1}}
        store = objectstore.Store("s3://mlc-completing/p", {**options, **(
            {"complete_read_timeout": complete_read_timeout} if complete_read_timeout else {})})
        try:
            if complete_read_timeout is None:
                store.fs.put_file(str(big), store.path("big.bin"), chunksize=5 << 20)
                assert store.info("big.bin")["size"] == big.stat().st_size
            else:       # the setting is what waits: at 1 s the answer is cut, and the tries after it fail
                with pytest.raises(FileNotFoundError, match="upload does not exist"):
                    store.fs.put_file(str(big), store.path("again.bin"), chunksize=5 << 20)
        finally:
            gateway.close()
        assert gateway.held >= 1, "no completion went through the gateway: the test tests nothing"
