"""A response body, and the ways the server sends one: whole, cut short, trickled, padded, dropped.

A drawn picture or an API reply is held in memory; a folder-mode file is read from disk a chunk at a
time as it is sent, so serving a file of any size to any number of clients at once holds one chunk
per client. (The security26 audit: the server read each file whole, and a 2 GB file made a
folder-mode collect peak at 2.1 GB before the download was refused as too large.)
"""

from __future__ import annotations

import logging
import os
import time
from typing import Iterator

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
OVERSIZE_BYTES = 25 * 1024 * 1024


class Body:
    """Bytes held (`data`) or a file's (`path`), read when sent; `size` and `head` are known up front."""

    def __init__(self, data: bytes | None = None, path: str | None = None):
        if (data is None) == (path is None):
            raise ValueError("a Body is either bytes or a file")
        self.data, self.path = data, path
        if data is not None:
            self.size, self.head = len(data), data[:16]
        else:
            with open(path, "rb") as f:
                self.size, self.head = os.fstat(f.fileno()).st_size, f.read(16)

    def chunks(self, end: int | None = None) -> Iterator[bytes]:
        """The first `end` bytes (all by default) in pieces of at most CHUNK. A file that shrank since
        it was measured ends early: the client sees fewer bytes than the Content-Length announced."""
        end = self.size if end is None else min(end, self.size)
        if self.data is not None:
            yield from (self.data[i:min(i + CHUNK, end)] for i in range(0, end, CHUNK))
            return
        with open(self.path, "rb") as f:
            while end > 0 and (piece := f.read(min(CHUNK, end))):
                end -= len(piece)
                yield piece

    @property
    def image_type(self) -> str:
        """The media type the bytes show (a folder's WebP was sent as image/jpeg, and recorded so)."""
        head = self.head
        if head.startswith(b"\x89PNG"):
            return "image/png"
        if head[:3] == b"GIF":
            return "image/gif"
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return "image/webp"
        if head[:2] == b"BM":
            return "image/bmp"
        if head[:4] in (b"II*\x00", b"MM\x00*"):
            return "image/tiff"
        if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
            return "image/avif"
        return "image/jpeg"


class BodySender:
    """The request handler's ways of sending a Body (mixed into BaseHTTPRequestHandler)."""

    def _send_body(self, content_type: str, body: Body, end: int | None = None) -> None:
        """The first `end` bytes (all by default), announced as the whole body."""
        sent = body.size if end is None else min(end, body.size)
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(sent))
        self.end_headers()
        for piece in body.chunks(sent):
            self.wfile.write(piece)

    def _drop_mid_body(self, body: Body) -> None:
        """The whole length announced, 60% sent, the connection closed: what a reset looks like."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", body.image_type)
        self.send_header("Content-Length", str(body.size))
        self.end_headers()
        for piece in body.chunks(int(body.size * 0.6)):
            self.wfile.write(piece)
        self.wfile.flush()

    def _stream_oversize(self, body: Body) -> None:
        """The image, then zeros to 25 MB, with no Content-Length: the body ends when the connection closes."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Connection", "close")
        self.end_headers()
        zeros = b"\0" * CHUNK
        try:
            sent = 0
            for piece in body.chunks():
                self.wfile.write(piece)
                sent += len(piece)
            while sent < OVERSIZE_BYTES:
                piece = zeros[: OVERSIZE_BYTES - sent]
                self.wfile.write(piece)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError) as error:
            log.debug("client stopped reading an oversize body (expected for a careful client): %s", error)

    def _trickle(self, content_type: str, body: Body) -> None:
        """The right length announced, then one byte every trickle_ms: each read gets a byte long
        before any read timeout, so only a total deadline ends the download (or the API call)."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(body.size))
        self.end_headers()
        pause = self.app.faults.spec.trickle_ms / 1000
        try:
            for piece in body.chunks():
                for i in range(len(piece)):
                    self.wfile.write(piece[i:i + 1])
                    self.wfile.flush()
                    time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError) as error:
            log.debug("client gave up on a trickled body (expected for a client with a deadline): %s", error)
