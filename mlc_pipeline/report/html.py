"""The HTML building blocks of the report: inline thumbnails, captioned figures, tables, and the
sections that fold away. The page stands alone (images are data: URIs), so it can be mailed or
attached to a CI run.

A thumbnail shows a file as the pipeline reads it (`images.load_rgb`: EXIF orientation, transparency
on white, 16-bit scaled, the first frame), and the report decodes no file curation would refuse to
decode: one whose verification reason says so (`images.NOT_DECODED`, as the review app), or
whose header is over curation's limits (`curate.verify`), gets a placeholder naming why."""

from __future__ import annotations

import base64
import html
import io
import logging
import os
import warnings
from pathlib import Path

from PIL import Image

from mlc_pipeline.curate.verify import VerifyLimits, load_format_plugins, recorded_reason
from mlc_pipeline.images import DECODE_ERRORS, NOT_DECODED, load_rgb

log = logging.getLogger(__name__)
# curation's reasons for a file too large to decode (a size decided from the header and the byte count)
TOO_LARGE = ("file-too-large", "decompression-bomb")


def thumbnail(path: str | Path, side: int = 112, quality: int = 75, limits: VerifyLimits | None = None,
              reason: str | None = None) -> tuple[str | None, str | None]:
    """(an inline JPEG as a data: URI, None), or (None, why there is none).

    `reason`: the file's verification reason, if curation gave one; `limits`: curation's (the
    config's, `curate.stage.limits_of`; its defaults when None). Only the header is read before the
    size is known to be within them."""
    if reason and reason.startswith(NOT_DECODED):
        return None, f"not decoded: {reason}"
    limits = limits or VerifyLimits()
    try:
        with warnings.catch_warnings():     # Pillow's own bomb warning is curation's refusal too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            load_format_plugins(limits.formats)
            with Image.open(path, formats=limits.formats) as im:      # the header only
                too_large = recorded_reason(*im.size, os.stat(path).st_size, 1, limits)
        if too_large in TOO_LARGE:
            return None, f"not decoded: {too_large}"
        im = load_rgb(path, max_side=side)      # JPEGs drafted, then one Lanczos resize: faster than before
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None, "not decoded: decompression-bomb"
    except FileNotFoundError:
        return None, "file missing"
    except DECODE_ERRORS as exc:
        log.debug("no thumbnail for %s: %s", path, exc)
        return None, "not decodable"
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode(), None


def thumbnail_uri(path: str | Path, side: int = 112, quality: int = 75, limits: VerifyLimits | None = None,
                  reason: str | None = None) -> str | None:
    """A small inline JPEG (data: URI) so the page stands alone; None if the file is not decoded."""
    return thumbnail(path, side, quality, limits, reason)[0]


def figure(src: str | None, caption: str, why: str = "not decodable") -> str:
    img = f'<img src="{src}" alt="{html.escape(caption)}">' if src else f'<div class="broken">{html.escape(why)}</div>'
    return f'<figure>{img}<figcaption>{html.escape(caption)}</figcaption></figure>'


def image_figure(path: str | Path, caption: str, side: int = 112, quality: int = 75,
                 limits: VerifyLimits | None = None, reason: str | None = None) -> str:
    "A file's thumbnail and its caption, or a placeholder saying why it is not shown."
    src, why = thumbnail(path, side, quality, limits, reason)
    return figure(src, caption, why or "not decodable")


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
