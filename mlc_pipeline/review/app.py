"""The review app: server-rendered pages over the catalog and the published versions, and a small
JSON API for the actions (static/review.js calls it). Every read and write goes through
catalog.overrides (the actions), catalog.review (the lists) and catalog, on two connections, each used
by one request at a time (a lock each): FastAPI runs plain `def` endpoints in a thread pool, and a
catalog connection is not meant for threads at once. The pages read on one, the actions write on the
other: an action waiting for another command's write lock (up to ACTION_LOCK_WAIT_S) keeps no page
waiting. Other processes (`mlc build`, a second `mlc review`) are kept consistent by the catalog's
transactions, on both backends (catalog/overrides.py)."""

from __future__ import annotations

import contextlib
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from mlc_pipeline.catalog import overrides as co
from mlc_pipeline.catalog import review as cr
from mlc_pipeline.catalog import CatalogBusy, CatalogError, CatalogLost
from mlc_pipeline.catalog.sqlite import CatalogMoved
from mlc_pipeline.config import Config
from mlc_pipeline.locking import DataRootBusy, data_root_lock
from mlc_pipeline.curate.lookalikes import hold_if_looks_taken_down
from mlc_pipeline.dataset.build import photo_page
from mlc_pipeline.review.answers import moved, unavailable
from mlc_pipeline.review.params import client_of, effective, filters_of, fits_sql, known_id, whole_number
from mlc_pipeline.imageformat import file_media_type
from mlc_pipeline.review.security import COOKIE, FILE_HEADERS, SESSION_MAX_AGE_S, Guard, session_value
from mlc_pipeline.review.lists import came_from, hide_handled, in_list, model_lists
from mlc_pipeline.review.queues import scores_for
from mlc_pipeline.review.state import Review
from mlc_pipeline.review.thumbs import FAVICON, PLACEHOLDER, thumbnail

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
PAGE_SIZE = 60
MAX_PAGE = 10**9
# An action waits this long for a writer (collect, curate) to release the catalog, then says so (503)
# instead of holding the reviewer for the batch commands' minute and answering 500.
ACTION_LOCK_WAIT_S = 10.0
# A page indexes a newly published version only if the catalog is free about at once (else on a later page).
PAGE_WRITE_WAIT_S = 1.0
# The queues a reviewer works through, each a browse filter sorted by what to see first.
QUEUES = {
    "quarantined and rejected files, with their reasons": {"status": "rejected"},
    "duplicates (side by side: the duplicates page)": {"status": "duplicate"},
    "mined hard negatives, highest score first": {"reason": "hard-negative", "sort": "score"},
    "pool images held back from mining, not decided yet, highest score first": {"reason": "held", "sort": "score",
                                                                                 "reviewed": "0"},
    "negatives put back with mlc mine --undo (never mined again)": {"reason": "not-a-negative"},
    "probe images (unknown kinds) in the evaluation set": {"set": "probe", "status": "accepted"},
    "changed in review": {"reviewed": "1"},
}
# What /api/action does (`remove`: the takedown; the others: catalog.overrides.act).
ACTIONS = ("relabel", "reject", "restore", "not-duplicate", "remove")


def create_app(cfg: Config, token: str | None = None, host: str | None = None) -> FastAPI:
    """The app; `host`: the address it is bound to (a loopback one is then an accepted Host)."""
    review = Review(cfg, ACTION_LOCK_WAIT_S, PAGE_WRITE_WAIT_S)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        review.close()

    app = FastAPI(title="mlc review", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.review = review
    @app.middleware("http")     # added before the guard, which therefore runs first
    async def connected(request: Request, call_next):
        """A request after a reconnect that failed (the server was still down) reconnects first, so
        the first one after the server is back works, and none runs on a closed connection. Once the
        SQLite catalog is moved (catalog.moved), every request is refused: pages would read a stale file."""
        if not request.url.path.startswith("/static/"):
            try:
                review.refuse_moved()
            except CatalogMoved as exc:
                return moved(request, exc)
        if review.broken and not request.url.path.startswith("/static/"):
            try:
                await run_in_threadpool(review.ensure_connected)
            except CatalogError as exc:
                return unavailable(request, f"the catalog cannot be reached yet ({exc}); nothing was done: try "
                                            f"again in a moment")
        return await call_next(request)
    app.middleware("http")(Guard(token, bound=host))
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals.update(urlencode=urlencode, classes=review.classes, dataset=review.dataset)
    templates.env.filters["detail"] = lambda d: ", ".join(f"{k} {v}" for k, v in sorted(d.items()))
    templates.env.filters["utc"] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))

    async def refused(request: Request, exc: Exception) -> JSONResponse:
        """Every refusal as the actions answer, `{"error": ...}`: HTTPException's, and FastAPI's 422 for
        `/image/abc` (404: words name no candidate, as an id past SQL's integers) or `?page_no=abc` (400)."""
        if isinstance(exc, StarletteHTTPException):
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        loc = next((e["loc"] for e in exc.errors() if e.get("loc")), ("query", "a number"))
        return JSONResponse({"error": f"no candidate {request.url.path.rsplit('/', 1)[-1]!r}" if loc[0] == "path" else
                             f"{loc[-1]} must be a whole number"}, status_code=404 if loc[0] == "path" else 400)
    app.add_exception_handler(RequestValidationError, refused)
    app.add_exception_handler(StarletteHTTPException, refused)

    async def lost(request: Request, exc: CatalogLost) -> Response:
        """The catalog's connection lost under a request: opened again, and the request answered 503
        in words (an action may or may not have been saved: the server may have committed it)."""
        try:
            await run_in_threadpool(review.reconnect)
            now = "reconnected: reload the page"
        except CatalogError as again:
            now = f"the catalog cannot be reached yet ({again}): try again in a moment"
        what = ("this action may not have been saved; reload the image's page to see whether it was, then "
                if request.url.path.startswith("/api/") else "")
        return unavailable(request, f"the connection to the catalog was lost ({str(exc).split('; ')[0]}); {what}{now}")
    app.add_exception_handler(CatalogLost, lost)
    app.add_exception_handler(CatalogMoved, moved)     # moved after the request's check: its write refused

    def page(request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    @app.get("/", response_class=HTMLResponse)
    def browse(request: Request, page_no: int = 1):
        filters = filters_of(request)
        page_no = min(max(1, page_no), MAX_PAGE)     # an offset past SQL's 64-bit integers was a 500
        started = time.perf_counter()
        with review.lock:
            published = review.refresh_versions()
            rows, total = cr.browse(review.catalog, filters, review.dataset, PAGE_SIZE, (page_no - 1) * PAGE_SIZE,
                                    order=filters.get("sort", "id"))
            if filters.get("version") and filters["version"] not in published:    # withdrawn since it was indexed
                rows, total = [], 0
            facets = review.facets()
        for r in rows:
            r["eff"] = effective(r, cfg.source.licenses)
        pages = max(1, -(-total // PAGE_SIZE))
        if page_no > pages:         # past the end (an old link, a list that shrank): its last page
            return RedirectResponse(f"/?{urlencode({**filters, 'page_no': pages})}", status_code=303)
        return page(request, "browse.html", rows=rows, total=total, page_no=page_no, pages=pages, filters=filters,
                    facets=facets, versions=published, query=urlencode(filters),
                    ms=round((time.perf_counter() - started) * 1000))

    @app.get("/image/{cid}", response_class=HTMLResponse)
    def image(request: Request, cid: int):
        filters = filters_of(request)
        with review.lock:
            published = review.refresh_versions()
            row = review.catalog.get(known_id(cid))
            if row is None:
                raise HTTPException(404, f"no candidate {cid}")
            override = co.override_of(review.catalog, cid)
            events = review.catalog.events(cid)
            acts = co.actions(review.catalog, cid)
            latest = co.latest_undoable(review.catalog, cid)
            per_version = [r for r in cr.labels_per_version(review.catalog, review.dataset, cid)
                           if r["version"] in published]        # not a version withdrawn since it was indexed
            prev_id, next_id, before = cr.neighbours(review.catalog, filters, review.dataset, cid,
                                                     order=filters.get("sort", "id"))
            steps = {"prev_id": prev_id, "next_id": next_id, "query": urlencode(filters),
                     "back": f"/?{urlencode({**filters, 'page_no': before // PAGE_SIZE + 1})}"}
            # opened from one of the model's lists on the queues page: j/k/Esc in that list; from another
            # page (the duplicates, the log, an image's "kept" link): Esc back to it
            steps = (in_list(cfg, review.catalog, request.query_params.get("list"), cid, PAGE_SIZE,
                             hide_handled(request.query_params)) or came_from(request.query_params, steps))
            kept = review.catalog.get(row["duplicate_of"]) if row["duplicate_of"] else None
            copies = review.catalog.candidates(duplicate_of=cid, status="duplicate")   # dropped for it
        eff = effective({**row, "review_labels": override["labels"], "review_include": override["include"]},
                        cfg.source.licenses, kept)
        return page(request, "image.html", row=row, eff=eff, override=override, events=events, actions=acts,
                    scores=scores_for(cfg, cid, row["photo_id"], row["source"]), copies=copies, source_file=source_file_of(row),
                    photo_page=photo_page(row, flickr_pages=True),     # Flickr's only for a photo from Flickr
                    latest=latest, per_version=per_version, kept=kept, **steps)

    def source_file_of(row: dict) -> str | None:
        """Folder mode: the file a photo was served from (where to fix or delete it at its source)."""
        if row["source"] != "local" or not row["source_file"]:
            return None
        return str(Path(cfg.source.local.folder) / row["source_file"]) if cfg.source.local.folder else row["source_file"]

    @app.get("/duplicates", response_class=HTMLResponse)
    def duplicates(request: Request, page_no: int = 1):
        page_no = min(max(1, page_no), MAX_PAGE)     # an offset past SQL's 64-bit integers was a 500
        with review.lock:
            rows, total = cr.duplicate_pairs(review.catalog, PAGE_SIZE // 2, (page_no - 1) * (PAGE_SIZE // 2))
        pages = max(1, -(-total // (PAGE_SIZE // 2)))
        if page_no > pages:
            return RedirectResponse(f"/duplicates?page_no={pages}", status_code=303)
        return page(request, "duplicates.html", rows=rows, total=total, page_no=page_no, pages=pages)

    @app.get("/queues", response_class=HTMLResponse)
    def queues(request: Request, noisy_page: int = 1, wrong_page: int = 1, probes_page: int = 1):
        with review.lock:
            count = lambda f: cr.browse(review.catalog, f, review.dataset, 0, 0)[1]
            counts = {name: count(f) for name, f in QUEUES.items()}
            hide = hide_handled(request.query_params)
            lists = model_lists(cfg, review.catalog, {"noisy": noisy_page, "wrong": wrong_page, "probes": probes_page},
                                PAGE_SIZE, hide)
        return page(request, "queues.html", counts=counts, queues=QUEUES, lists=lists, hide=hide,
                    keep={"handled": "hide"} if hide else {})

    @app.get("/log", response_class=HTMLResponse)
    def action_log(request: Request):
        with review.lock:
            rows = cr.recent_actions(review.catalog, 200)
        return page(request, "log.html", rows=rows)

    @app.get("/favicon.ico")
    def favicon():
        return Response(FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    @app.get("/thumb/{cid}")
    def thumb(cid: int):
        with review.lock:
            row = review.catalog.get(known_id(cid))
        if row is None:
            raise HTTPException(404, f"no candidate {cid}")
        path = thumbnail(cfg.data_dir, row["sha256"], row["file_path"], row["verify_reason"])
        if path is None:
            truncated = (row["verify_reason"] or "").startswith("truncated")
            return Response(PLACEHOLDER.format("truncated file" if truncated else "no image"),
                            media_type="image/svg+xml", headers=FILE_HEADERS)
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400", **FILE_HEADERS})

    @app.get("/file/{cid}")
    def original(cid: int):
        with review.lock:
            row = review.catalog.get(known_id(cid))
        if row is None or not row["file_path"] or not Path(row["file_path"]).is_file():
            raise HTTPException(404, "no file for this candidate")
        if (row["verify_reason"] or "").startswith(("decompression-bomb", "file-too-large", "not-an-image")):
            raise HTTPException(403, f"not served: {row['verify_reason']}")
        # The type its bytes show, never the stored remote header ("image/gif, text/html" ran as HTML)
        if (media_type := file_media_type(row["file_path"])) is None:
            raise HTTPException(403, "not served: not a JPEG, PNG, GIF, WebP, BMP or TIFF file")
        return FileResponse(row["file_path"], media_type=media_type, headers=FILE_HEADERS)

    @app.post("/api/action")
    async def action(request: Request):
        return await in_thread(request, do_action)

    @app.post("/api/undo")
    async def undo_action(request: Request):
        return await in_thread(request, do_undo)

    async def in_thread(request: Request, fn):
        """Parse the common fields, then run `fn` in the thread pool (it takes the actions' lock)."""
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body must be JSON"}, status_code=400)
        except RecursionError:      # json's decoder on a body nested thousands deep (it was a 500 and a traceback)
            return JSONResponse({"error": "the body must be JSON nested at most a few levels deep"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        try:
            cid = whole_number(body.get("id"), "id")
        except ValueError:
            return JSONResponse({"error": "id must be a candidate id"}, status_code=400)
        if not fits_sql(cid):
            return JSONResponse({"error": f"no candidate {cid}"}, status_code=404)
        reason = str(body.get("reason") or "").strip()[:500]
        try:
            return await run_in_threadpool(fn, cid, body, reason, client_of(request))
        except CatalogBusy as exc:
            log.warning("review: an action waited %g s for the catalog: %s", ACTION_LOCK_WAIT_S, exc)
            return JSONResponse({"error": "the catalog is busy: another command (a collect, a curate) is writing "
                                          "to it; nothing was changed: try again in a moment"},
                                status_code=503, headers={"Retry-After": "5"})

    def do_action(cid: int, body: dict, reason: str, client: str) -> JSONResponse:
        kind = body.get("action")
        if kind not in ACTIONS:     # a malformed request (400), not a conflict with the image's state (409)
            return JSONResponse({"error": f"{'the action is missing' if kind is None else f'unknown action {kind!r}'}"
                                          f": one of {', '.join(ACTIONS)}"}, status_code=400)
        labels = body.get("labels")
        if (labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels))
                or kind == "relabel" and not labels):   # a mistyped key must not turn a class image into "other"
            return JSONResponse({"error": 'labels must be a list of names: one or more classes, or ["other"] for '
                                          "none of them"}, status_code=400)
        if kind == "remove":
            return do_remove(cid, reason, client)
        seen = body.get("seen_action")      # review.js sends the page's latest action: a stale tab is refused
        if seen is not None and (isinstance(seen, bool) or not isinstance(seen, int) or seen < 0):
            return JSONResponse({"error": "seen_action must be an action id (0: none)"}, status_code=400)
        try:
            with review.write_lock:
                res = co.act(review.writer, cid, kind, reason or "(no reason given)", client, review.classes,
                             labels=labels, check_file=review.check_file, seen_action=seen)
                review._facets = (0.0, None)
        except co.UnknownCandidate as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        except co.ReviewError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        if res.action_id is None:       # the labels it already has: nothing logged, nothing to undo
            return JSONResponse({"ok": True, "changed": False, "action_id": None, "state": res.state,
                                 "message": "nothing changed: the image already has these labels"})
        log.info("review: %s on candidate %s by %s", kind, cid, client)
        return answer(cid, res, client, compare=kind == "restore")

    def answer(cid: int, res: co.ActionResult, client: str, compare: bool = True) -> JSONResponse:
        """An action's answer; an image an undo or a restore leaves in that looks like a photo taken
        down is held first."""
        ok = {"ok": True, "changed": True, "action_id": res.action_id, "state": res.state}
        try:
            with review.write_lock:
                if compare and (held := hold_if_looks_taken_down(review.writer, cid, client)):
                    return JSONResponse({**ok, "held": held["photo_id"], "state": co.override_of(review.writer, cid)})
        except CatalogBusy:     # the action is saved (not the 503's "nothing was changed": verify20)
            return JSONResponse({**ok, "warning": "saved, but not compared with the photos taken down (the "
                                                  "catalog was busy): undo and redo it in a moment to compare"})
        return JSONResponse(ok)

    def do_undo(cid: int, body: dict, reason: str, client: str) -> JSONResponse:
        try:
            action_id = whole_number(body.get("action_id"), "action_id")
            if action_id < 1:       # ids start at 1: a malformed request (400), not a conflict (409)
                raise ValueError(action_id)
        except ValueError:
            return JSONResponse({"error": "action_id must be an action id"}, status_code=400)
        if not fits_sql(action_id):
            return JSONResponse({"error": f"action_id {action_id} is out of range"}, status_code=400)
        try:
            with review.write_lock:
                res = co.undo(review.writer, cid, action_id, reason or "(no reason given)", client)
        except co.UnknownCandidate as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        except co.ReviewError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        return answer(cid, res, client)

    def do_remove(cid: int, reason: str, client: str) -> JSONResponse:
        """The takedown of `mlc remove --photo-id`: final, so it needs a reason and cannot be undone."""
        from mlc_pipeline.curate.takedown import remove_photos
        if not reason:
            return JSONResponse({"error": "a takedown needs a reason (it is kept in the catalog)"}, status_code=400)
        with review.write_lock:
            row = review.writer.get(cid)
            if row is None:
                return JSONResponse({"error": f"no candidate {cid}"}, status_code=404)
            if row["status"] == "removed":
                return JSONResponse({"error": "already removed"}, status_code=409)
            try:
                # As `mlc remove`: the files lock, so no curate moves the file and no build copies it
                # meanwhile. Not waited for (the reviewer is told), but a run's training never holds it.
                # On an object-store root also the write lock, as `mlc remove` there: a command writing
                # to this cache publishes it when it ends.
                with contextlib.ExitStack() as held:
                    if cfg.data_url is not None:
                        held.enter_context(data_root_lock(cfg.data_dir, "mlc review (takedown)", wait=False))
                    res = remove_photos(cfg, reason, photo_id=row["photo_id"], source=row["source"], wait=False,
                                        lock_timeout_s=ACTION_LOCK_WAIT_S, client=client)
            except DataRootBusy as exc:       # FilesBusy too
                return JSONResponse({"error": f"{str(exc).split(';')[0]}: try the takedown again when it is "
                                              f"done, or run `mlc remove`, which waits for it"}, status_code=409)
            review._facets = (0.0, None)
            try:        # the takedown is done (the catalog's removals table keeps it): never "nothing changed"
                for r in res.removed:
                    co.log_removal(review.writer, r["id"], reason, client, len(res.files_deleted))
            except CatalogBusy as exc:
                log.warning("review: takedown of %s:%s done, but its entry in the review log was not written: %s",
                            row["source"], row["photo_id"], exc)
        log.info("review: takedown of photo %s:%s by %s", row["source"], row["photo_id"], client)
        return JSONResponse({"ok": True, "removed": len(res.removed), "held": len(res.held), "published_in": res.published_in,
                             "held_in": res.held_in, "copies": len(res.copies), "copies_in": res.copies_in})

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request):
        return page(request, "login.html", error=None)

    @app.post("/login")
    async def login(request: Request):
        form = await request.form()
        guard_token = token or ""
        if not guard_token:
            return RedirectResponse("/", status_code=303)
        given = str(form.get("token") or "").strip()
        import hmac
        if not given or not hmac.compare_digest(given.encode(), guard_token.encode()):
            return page(request, "login.html", status_code=401, error="wrong token")
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(COOKIE, session_value(guard_token), max_age=SESSION_MAX_AGE_S, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
        return resp

    return app
