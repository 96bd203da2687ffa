"""The HTML building blocks of the report: inline thumbnails, captioned figures, tables, and the
sections that fold away. The page stands alone (images are data: URIs), so it can be mailed or
attached to a CI run."""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path

from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)


def thumbnail_uri(path: str | Path, side: int = 112, quality: int = 75) -> str | None:
    """A small inline JPEG (data: URI) so the page stands alone; None if the file cannot be decoded."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (side * 2, side * 2))
            im = im.convert("RGB")
            im.thumbnail((side, side))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=quality)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        log.debug("no thumbnail for %s: %s", path, exc)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def figure(src: str | None, caption: str) -> str:
    img = f'<img src="{src}" alt="{html.escape(caption)}">' if src else '<div class="broken">not decodable</div>'
    return f'<figure>{img}<figcaption>{html.escape(caption)}</figcaption></figure>'


def png_img(png: bytes, alt: str) -> str:
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def table(headers: list[str], rows: list[list], clip: tuple[int, ...] = ()) -> str:
    """Cells of the `clip` columns are cut to one line with an ellipsis, the full text in their
    tooltip (a 300-character owner name must not push the table off screen)."""
    def cell(i: int, value) -> str:
        text = html.escape(str(value))
        return f"<td class='clip' title='{text}'>{text}</td>" if i in clip else f"<td>{text}</td>"
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def folded(summary: str, body: str, open_: bool = False) -> str:
    """A <details> section: the browser shows only its summary line until clicked."""
    return f"<details{' open' if open_ else ''}><summary>{summary}</summary>{body}</details>"
