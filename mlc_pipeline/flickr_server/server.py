"""The HTTP side: a threaded HTTP/1.1 server answering the REST endpoint and the static image host."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlsplit

from .bodies import Body, BodySender
from .faults import FAULTS_HELP, FaultPlan, FaultSpec
from .model import SUFFIX_TO_SIZE, WorldSpec
from .rest import RestApi, encode_response, fail
from .stats import ServerStats
from .world import World, build_world

log = logging.getLogger(__name__)

REST_PATHS = ("/services/rest/", "/services/rest")
IMAGE_PATH = re.compile(r"^/static/(?P<server>\d+)/(?P<id>\d+)_(?P<secret>[0-9a-f]+)(?P<suffix>_[a-z])?\.jpg$")
OAUTH_PARAM = re.compile(r'(\w+)="([^"]*)"')
HTML_ERROR_PAGE = (b"<!DOCTYPE html>\n<html><head><title>Flickr: Something went wrong</title></head>\n"
                   b"<body><h1>Oops! Something went wrong.</h1><p>Please try again later.</p></body></html>\n")


class _App:
    """Shared state of one server: the world, the REST API, the fault plan, the statistics."""

    def __init__(self, world: World, faults: FaultSpec, static_host: str, redirect_host: str):
        self.world = world
        self.faults = FaultPlan(faults)
        self.stats = ServerStats()
        self.static_host = static_host
        self.redirect_host = redirect_host
        self.api = RestApi(world, static_host, self.stats.add_offered)
        for name, n in world.duplicate_counts().items():
            self.faults.count(name, n)  # duplicates are injected once, when the world is built


def api_key_of(params: dict[str, str], authorization: str | None) -> str:
    """The key from the form/query, or from flickrapi's OAuth1 header (its signature is not checked)."""
    if params.get("api_key"):
        return params["api_key"]
    if authorization and authorization.strip().lower().startswith("oauth "):
        fields = {name: unquote(value) for name, value in OAUTH_PARAM.findall(authorization)}
        return fields.get("oauth_consumer_key", "")
    return ""


def request_key(params: dict[str, str]) -> str:
    """What identifies a request across retries: its parameters minus nonces, signatures and keys."""
    stable = sorted((k, v) for k, v in params.items() if k != "api_key" and not k.startswith("oauth_"))
    return json.dumps(stable, ensure_ascii=False)


class _Handler(BodySender, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so clients' connection pools are exercised
    server_version = "FakeFlickr/1.0"
    timeout = 60  # an idle keep-alive connection gives its thread back after this long
    # Headers and body go out in separate writes; with Nagle's algorithm the body would wait ~40 ms
    # for the client's delayed ACK on every keep-alive request.
    disable_nagle_algorithm = True

    @property
    def app(self) -> _App:
        return self.server.app  # type: ignore[attr-defined]

    def setup(self) -> None:
        super().setup()
        self.app.stats.connection_opened()

    def do_GET(self) -> None:
        self._dispatch(b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._dispatch(self.rfile.read(length) if length > 0 else b"")

    def _dispatch(self, body: bytes) -> None:
        url = urlsplit(self.path)
        if url.path in REST_PATHS:
            self._handle_api(url.query, body)
        elif url.path.startswith("/static/"):
            self._handle_image(url.path)
        else:
            self._send(404, "text/plain; charset=utf-8", b"Not found\n")

    # ------------------------------------------------------------------ REST

    def _handle_api(self, query: str, body: bytes) -> None:
        params = dict(parse_qsl(query, keep_blank_values=True))
        content_type = self.headers.get("Content-Type", "")
        if body and (not content_type or content_type.startswith("application/x-www-form-urlencoded")):
            params.update(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))
        app = self.app
        app.stats.api_call(params.get("method", ""))
        fault = app.faults.api_fault(request_key(params))
        if fault == "http500":
            self._send(500, "text/plain; charset=utf-8", b"Internal Server Error\n")
            return
        if fault == "code105":
            self._send(200, *encode_response(fail(105, "Service currently unavailable"), params))
            return
        if fault == "malformed":
            self._send(200, *encode_response({"stat": "ok"}, params))
            return
        if fault in ("api429", "api429_bare"):
            left = {"Retry-After": str(max(1, math.ceil(app.faults.rate_limit_left())))} if fault == "api429" else {}
            self._send(429, "text/plain; charset=utf-8", b"Too Many Requests\n", left)
            return
        if fault == "slow":
            time.sleep(app.faults.spec.slow_ms / 1000)
        key = api_key_of(params, self.headers.get("Authorization"))
        wanted = app.world.spec.api_key
        if not key or (wanted is not None and key != wanted):
            response = fail(100, "Invalid API Key (Key has invalid format)")
        else:
            if params.get("method") == "flickr.photos.search" and params.get("license") \
                    and app.faults.ignores_license(request_key(params)):
                app.faults.count("license_ignored")
                params = {k: v for k, v in params.items() if k != "license"}
            dated = ("min_upload_date", "max_upload_date")
            if params.get("method") == "flickr.photos.search" and any(params.get(k) for k in dated) \
                    and app.faults.ignores_dates(request_key(params)):
                app.faults.count("dates_ignored")
                params = {k: v for k, v in params.items() if k not in dated}
            paged = params.get("method") == "flickr.photos.search" and (app.faults.spec.repeat_page or
                                                                         app.faults.spec.pages_low)
            searched = params.get("text") or params.get("tags") or ""    # what reply_no_license is drawn by
            response = app.faults.damage_entries(app.faults.damage_pages(params, request_key(params), app.api.call)
                                                 if paged else app.api.call(params), searched)
        content_type, data = encode_response(response, params)
        if fault == "api_trickle":
            self._trickle(content_type, Body(data))
        else:
            self._send(200, content_type, data)

    # ------------------------------------------------------------------ images

    def _handle_image(self, path: str) -> None:
        app = self.app
        span = app.stats.image_started(path)
        try:
            if app.faults.spec.image_latency_ms > 0:
                time.sleep(app.faults.spec.image_latency_ms / 1000)
            self._serve_image(path)
        finally:
            app.stats.image_finished(span)

    def _serve_image(self, path: str) -> None:
        app = self.app
        match = IMAGE_PATH.match(path)
        photo = app.world.by_id.get(match["id"]) if match else None
        size = SUFFIX_TO_SIZE.get(match["suffix"] or "") if match else None
        if (photo is None or photo.secret != match["secret"] or photo.server != match["server"]
                or size is None or size not in photo.sizes):
            self._send(404, "text/plain; charset=utf-8", b"Photo not found\n")
            return
        if app.faults.image_429(path):
            self._send(429, "text/plain; charset=utf-8", b"Too Many Requests\n",
                       {"Retry-After": str(app.faults.spec.retry_after_s)})
            return
        if app.faults.image_5xx(path):
            self._send(app.faults.spec.img5xx_code, "text/html; charset=utf-8", HTML_ERROR_PAGE)
            return
        # The redirect target (the other host name) serves the real image: it is the same server.
        arrived_via_alias = self.headers.get("Host", "") == app.redirect_host
        fault = None if arrived_via_alias else app.faults.photo_fault(photo.id)
        if fault is not None:
            app.faults.count(fault)
        if fault == "redirect_offsite":
            self._send(302, "text/plain; charset=utf-8", b"", {"Location": f"http://{app.redirect_host}{path}"})
            return
        if fault == "empty":
            self._send(200, "image/jpeg", b"")
            return
        if fault == "html":
            lie = app.faults.html_lies_about_type(photo.id)
            self._send(200, "image/jpeg" if lie else "text/html; charset=utf-8", HTML_ERROR_PAGE)
            return
        body = app.world.image_body(photo.id, size)
        if fault == "truncated":
            self._send_body("image/jpeg", body, int(body.size * 0.6))
        elif fault == "oversize":
            self._stream_oversize(body)
        elif fault == "trickle":
            self._trickle(body.image_type, body)
        elif fault == "octet":
            self._send_body("application/octet-stream", body)
        elif app.faults.image_dropped(path):
            self._drop_mid_body(body)
        else:
            self._send_body(body.image_type, body)

    # ------------------------------------------------------------------ plumbing

    def _send(self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's signature
        log.debug("%s - %s", self.address_string(), format % args)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256  # many clients connecting at once must not wait for SYN retries
    allow_reuse_address = True

    def handle_error(self, request, client_address) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            log.debug("connection from %s ended: %r", client_address, error)
        else:
            log.exception("error while serving %s", client_address)


class FlickrServer:
    """A Flickr-compatible REST endpoint and static image host on one port, in a background thread."""

    def __init__(self, world_spec: WorldSpec | None = None, fault_spec: FaultSpec | None = None,
                 host: str = "127.0.0.1", port: int = 0):
        self.world_spec = world_spec or WorldSpec()
        self.fault_spec = fault_spec or FaultSpec()
        self.world = build_world(self.world_spec, self.fault_spec)
        self._httpd = _HTTPServer((host, port), _Handler)
        self.port = self._httpd.server_address[1]
        public_host = "127.0.0.1" if host in ("", "0.0.0.0") else host
        self.static_host = f"{public_host}:{self.port}"
        self.rest_url = f"http://{self.static_host}/services/rest/"
        # Another name for this same server: a redirect there leaves the advertised static host.
        alias = "localhost" if public_host != "localhost" else "127.0.0.1"
        self.redirect_host = f"{alias}:{self.port}"
        self._app = _App(self.world, self.fault_spec, self.static_host, self.redirect_host)
        self._httpd.app = self._app  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    def start(self) -> "FlickrServer":
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, name="flickr-server", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def serve_forever(self) -> None:
        """Serve in the calling thread (the CLI) until interrupted."""
        try:
            self._httpd.serve_forever()
        finally:
            self._httpd.server_close()

    def __enter__(self) -> "FlickrServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def max_overlapping_images(self, min_overlap_s: float = 0.05) -> int:
        "The most image requests at once, a handoff between two requests not counted (ServerStats.max_overlapping)."
        return self._app.stats.max_overlapping(min_overlap_s)

    def stats(self) -> dict:
        stats = self._app.stats
        with stats.lock:
            return {
                "api_calls": stats.api_calls,
                "api_calls_by_method": dict(stats.api_calls_by_method),
                "api_call_times": list(stats.api_call_times),
                "image_requests": stats.image_requests,
                "image_requests_by_path": dict(stats.image_paths),
                "image_spans": [tuple(span) for span in stats.image_spans],
                "max_concurrent_image_connections": stats.max_concurrent_image_connections,
                "connections_opened": stats.connections_opened,
                "faults_injected": self._app.faults.injected(),
                "offered": set(stats.offered),
            }


def _fail(message: str) -> int:
    print(f"mlc serve-flickr: {message}", file=sys.stderr)
    return 2


def serve_main(argv: list[str]) -> int:
    """`mlc serve-flickr`: run the offline Flickr until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="mlc serve-flickr", description="Serve an offline, Flickr-compatible API.",
                                     epilog=FAULTS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the default world's photo counts")
    parser.add_argument("--folder", help="serve the image files of this folder instead of drawn pictures")
    parser.add_argument("--map", action="append", default=[], metavar="QUERY=SUBFOLDER",
                        help="folder mode: a search for QUERY returns the files under SUBFOLDER (repeatable)")
    parser.add_argument("--faults", default="", help='e.g. "http500=0.1,img429=0.2,seed=3" or "all": see below')
    parser.add_argument("--result-cap", type=int, default=4000)
    parser.add_argument("--api-key", default=None, help="accept only this key (default: any non-empty key)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.verbose:
        logging.getLogger().setLevel(logging.DEBUG)

    query_map = {}
    for item in args.map:
        query, sep, subfolder = item.partition("=")
        if not sep or not query.strip() or not subfolder.strip():
            parser.error(f"--map wants QUERY=SUBFOLDER, got {item!r}")
        query_map[query.strip()] = subfolder.strip()
    if args.map and not args.folder:
        parser.error("--map needs --folder")
    try:
        faults = FaultSpec.parse(args.faults)
    except ValueError as error:
        parser.error(str(error))
    spec = WorldSpec(kind="folder" if args.folder else "default", seed=args.seed, scale=args.scale,
                     folder=args.folder, query_map=query_map, result_cap=args.result_cap, api_key=args.api_key)
    if not 0 <= args.port <= 65535:
        return _fail(f"--port {args.port}: a port is 0-65535 (0: any free port)")
    try:
        server = FlickrServer(spec, faults, host=args.host, port=args.port)
    except ValueError as error:          # folder mode: a missing folder or subfolder, no --map
        return _fail(str(error))
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            return _fail(f"port {args.port} on {args.host} is already in use: another server, or an `mlc` run of "
                         f"a project whose source.local.port is {args.port}, may hold it; pick another --port")
        return _fail(f"cannot listen on {args.host}:{args.port}: {error.strerror or error}")
    print(f"Offline Flickr serving {len(server.world.photos)} photos", flush=True)
    print(f"REST endpoint: {server.rest_url}", flush=True)
    print(f"Static images: http://{server.static_host}/static/...  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    return 0
