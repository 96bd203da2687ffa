"""Turn a scene description into JPEG bytes at a requested size, cheaply (a few ms at 320 px)."""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageEnhance

from .scenes import canonical_frame, describe_scene

JPEG_QUALITY = 88
_RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
_NOISE_TILE = 1024  # at least the largest drawn frame (800 px) plus the largest offset (200 px)
_NOISE_STRENGTHS = (5, 10, 16)


@lru_cache(maxsize=None)
def _noise_tile(strength_index: int) -> Image.Image:
    """A fixed grain texture centred on `strength`; added with offset -strength it averages to zero."""
    strength = _NOISE_STRENGTHS[strength_index]
    rng = np.random.default_rng(20240601 + strength_index)
    shape = (_NOISE_TILE, _NOISE_TILE, 3)
    # The sum of two uniform draws: a triangular distribution on [0, 2*strength], cheap to make.
    values = rng.integers(0, strength + 1, shape, dtype=np.uint8) + rng.integers(0, strength + 1, shape, dtype=np.uint8)
    return Image.fromarray(values, "RGB")


@lru_cache(maxsize=64)
def _cached_scene(kind: str, render_seed: int, cw: int, ch: int) -> list:
    return describe_scene(kind, render_seed, cw, ch)


def render_scene(kind: str, render_seed: int, aspect: tuple[int, int], width: int, height: int) -> Image.Image:
    """Draw the picture at exactly width x height. A size whose aspect differs from the picture's
    (Flickr's square sizes) is a centre crop of the picture drawn to cover it."""
    cw, ch = canonical_frame(*aspect)
    scale = max(width / cw, height / ch)
    full_w, full_h = max(width, round(cw * scale)), max(height, round(ch * scale))
    image = _draw(_cached_scene(kind, render_seed, cw, ch), full_w / cw, full_h / ch, full_w, full_h)
    if (full_w, full_h) != (width, height):
        left, top = (full_w - width) // 2, (full_h - height) // 2
        image = image.crop((left, top, left + width, top + height))
    return image


def _draw(ops: list, sx: float, sy: float, width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    thickness = (sx + sy) / 2
    for op in ops:
        kind = op[0]
        if kind == "grid":
            image.paste(_stretch_grid(op, width, height))
        elif kind == "poly":
            _, points, fill, outline, outline_width = op
            scaled = [(x * sx, y * sy) for x, y in points]
            draw.polygon(scaled, fill=fill, outline=outline, width=max(1, round(outline_width * thickness)) if outline else 1)
        elif kind == "line":
            _, points, fill, line_width = op
            draw.line([(x * sx, y * sy) for x, y in points], fill=fill, width=max(1, round(line_width * thickness)))
        elif kind == "noise":
            _, strength_index, ox, oy = op
            tile = _noise_tile(strength_index).crop((ox, oy, ox + width, oy + height))
            image = ImageChops.add(image, tile, scale=1.0, offset=-_NOISE_STRENGTHS[strength_index])
            draw = ImageDraw.Draw(image)
        else:
            raise ValueError(f"unknown drawing operation {kind!r}")
    return image


def _stretch_grid(op: tuple, width: int, height: int) -> Image.Image:
    """Stretch a tiny image over the frame. Smooth resampling at full size costs milliseconds, so
    columns (gradients) are stretched vertically first and textures smoothed at half size."""
    _, gw, gh, data, resample = op
    grid = Image.frombytes("RGB", (gw, gh), data)
    if resample == "nearest":
        return grid.resize((width, height), Image.NEAREST)
    if gw == 1:
        return grid.resize((1, height), _RESAMPLE[resample]).resize((width, height), Image.NEAREST)
    half = grid.resize((max(1, width // 2), max(1, height // 2)), _RESAMPLE[resample])
    return half.resize((width, height), Image.NEAREST)


def encode_jpeg(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def near_duplicate(jpeg: bytes, variant_seed: int) -> bytes:
    """The same picture slightly cropped, resized back, brightened, and re-encoded at another quality."""
    with Image.open(io.BytesIO(jpeg)) as source:
        image = source.convert("RGB")
    width, height = image.size
    crop = 0.005 + 0.015 * (variant_seed % 7) / 6  # 0.5-2 % off each side: a near copy, not a new framing
    dx, dy = int(width * crop), int(height * crop)
    image = image.crop((dx, dy, width - dx, height - dy)).resize((width, height), Image.BILINEAR)
    image = ImageEnhance.Brightness(image).enhance(1.05 + 0.1 * (variant_seed % 5) / 4)
    return encode_jpeg(image, quality=70 if JPEG_QUALITY > 80 else 92)
