"""The review app's refusals in words, as a page or as the actions' JSON: a catalog out of reach (503),
a catalog that `mlc catalog migrate` moved away since the app started (409)."""

from __future__ import annotations

from html import escape

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from mlc_pipeline.catalog.sqlite import CatalogMoved


def unavailable(request: Request, text: str, status_code: int = 503) -> Response:
    """A 503 (or `status_code`) in words: `{"error": ...}` for an action, as the actions answer; a one-line
    page for a page. A 503 asks to retry (Retry-After)."""
    headers = {"Retry-After": "5"} if status_code == 503 else None
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": text}, status_code=status_code, headers=headers)
    return HTMLResponse(f"<!doctype html><title>mlc review</title><p>{escape(text)}</p>", status_code=status_code,
                        headers=headers)


def moved(request: Request, exc: CatalogMoved) -> Response:
    """This app's SQLite catalog moved to PostgreSQL (`mlc catalog migrate`) since it started: 409, in words."""
    return unavailable(request, f"{exc}; then restart `mlc review`. Nothing was done", 409)
