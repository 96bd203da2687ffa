"""Generator of hostile and awkward image files for the verify/hash tests.

`make_bad_files(dir, photo)` writes one file per case into `dir` and returns {name: BadFile}, where
`reason` is what `check_image` must report (None = a valid image that must load as proper RGB).
Content comes from a real photo where it matters (truncation, CMYK, EXIF rotation); everything is
small, so the whole set is written in well under a second.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "hymenoptera"


@dataclass(frozen=True)
class BadFile:
    path: Path
    reason: str | None   # expected check_image reason; None = valid, must normalise to RGB
    note: str


def fixture_photos() -> list[Path]:
    return sorted(FIXTURES.rglob("*.jpg"))


def encode(im: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    "A valid PNG signature + IHDR claiming width x height, with a token IDAT: a decompression bomb."
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1000)))
            + chunk(b"IEND", b""))


def png_bomb(path: Path, side: int = 13000, height: int | None = None) -> Path:
    """A side x side (or side x height) greyscale PNG of ~170 KB at 13000 (zeros compress 1000:1),
    written row by row so making it never holds the picture in memory; decoded it is side*side*3
    bytes as RGB (507 MB at 13000)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    height = side if height is None else height
    z, row, body = zlib.compressobj(9), b"\0" * (side + 1), []
    for _ in range(height):
        body.append(z.compress(row))
    body.append(z.flush())
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(body)) + chunk(b"IEND", b""))
    return path


def halves(size: tuple[int, int], left: tuple, right: tuple, mode: str = "RGB") -> Image.Image:
    "Left half one colour, right half another: makes orientation and colour easy to assert."
    im = Image.new(mode, size, left)
    im.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return im


def animated_gif(n_frames: int = 3, size: tuple[int, int] = (96, 96)) -> bytes:
    rng = np.random.default_rng(0)
    # Noisy frames so every frame carries real LZW data (a truncation then always hits a frame).
    frames = [Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)) for _ in range(n_frames)]
    frames[0] = Image.new("RGB", size, (255, 0, 0))
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def make_bad_files(out_dir: Path, photo: Path | None = None) -> dict[str, BadFile]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    photo = photo or fixture_photos()[0]
    src = Image.open(photo).convert("RGB")
    rng = np.random.default_rng(0)
    jpeg = encode(src, "JPEG", quality=90)

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: stored landscape, displayed rotated 90 degrees clockwise
    palette = Image.new("P", (100, 80), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.paste(1, (50, 0, 100, 80))
    gray16 = Image.fromarray(np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (64, 1)))
    cases: dict[str, tuple[str, bytes, str | None, str]] = {
        # name: (file name, bytes, expected reason, note)
        "empty": ("empty.jpg", b"", "empty-file", "zero bytes"),
        "random": ("random.jpg", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), "not-an-image",
                   "random bytes named .jpg"),
        "html": ("html.jpg", b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n" * 20,
                 "not-an-image", "an error page saved as .jpg"),
        "corrupt-header": ("corrupt-header.jpg", b"\xff\xd8\xff\xe0" + bytes(200), "corrupt-header",
                           "JPEG magic, garbage header"),
        "truncated-jpeg": ("truncated.jpg", jpeg[: len(jpeg) * 6 // 10], "truncated", "first 60% of a JPEG"),
        "truncated-jpeg-tail": ("truncated-tail.jpg", jpeg[:-64], "truncated", "JPEG missing its last 64 bytes"),
        "truncated-progressive": ("truncated-progressive.jpg",
                                  encode(src, "JPEG", quality=90, progressive=True)[:9000], "truncated",
                                  "progressive JPEG cut off"),
        # libjpeg only warns about these two and fills grey; Pillow raised nothing (curation29 audit, finding 5).
        "truncated-jpeg-eoi": ("truncated-eoi.jpg", jpeg[: len(jpeg) * 6 // 10] + b"\xff\xd9", "truncated",
                               "first 60% of a JPEG, then an EOI marker"),
        "corrupt-jpeg-scan": ("corrupt-scan.jpg", _flip_bytes(jpeg, len(jpeg) // 2, 8), "decode-error:CorruptJPEG",
                              "JPEG with 8 bytes of its scan damaged"),
        "truncated-png": ("truncated.png", encode(src, "PNG")[:30000], "truncated", "PNG cut in IDAT"),
        "truncated-gif": ("truncated.gif", encode(src, "GIF")[:20000], "truncated", "GIF cut off"),
        "truncated-webp": ("truncated.webp", encode(src, "WEBP", quality=80)[:3000], "truncated",
                           "WebP cut off (libwebp refuses it at open)"),
        "truncated-animated": ("truncated-animated.gif", animated_gif()[:-300], "truncated",
                               "animated GIF whose last frame is cut: frame 0 alone decodes fine"),
        "bomb-pillow-error": ("bomb-error.png", png_header_only(20000, 20000), "decompression-bomb",
                              "400 MP header: Pillow raises DecompressionBombError"),
        "bomb-pillow-warning": ("bomb-warning.png", png_header_only(10000, 10000), "decompression-bomb",
                                "100 MP header: Pillow only warns"),
        "bomb-limit": ("bomb-limit.png", png_header_only(9000, 8000), "decompression-bomb",
                       "72 MP header: below Pillow's limit, above ours"),
        "tiny": ("tiny.png", encode(src.resize((32, 24)), "PNG"), "too-small", "32x24"),
        "extreme-aspect": ("panorama.jpg", encode(src.resize((1000, 150)), "JPEG"), "extreme-aspect", "1000x150"),
        "float-mode": ("float.tif", encode(Image.fromarray(rng.random((80, 80), dtype=np.float32)), "TIFF"),
                       "unsupported-mode", "32-bit float TIFF (mode F)"),
        "icon": ("icon.ico", encode(src, "ICO", sizes=[(64, 64)]), "unsupported-format:ICO", "Windows icon"),
        "corrupt-data": ("corrupt-data.png", _flip_bytes(encode(src, "PNG"), 2000, 64), "decode-error:OSError",
                         "PNG with damaged IDAT bytes"),
        # Valid files that need care to normalise.
        "cmyk": ("cmyk.jpg", encode(halves((120, 80), (255, 0, 0), (0, 0, 255)).convert("CMYK"), "JPEG",
                                    quality=95), None, "CMYK JPEG, red | blue"),
        "gray16": ("gray16.png", encode(gray16, "PNG"), None, "16-bit greyscale ramp (mode I;16)"),
        "palette-transparent": ("palette-transparent.png",
                                encode(palette, "PNG", transparency=0), None,
                                "palette PNG: left half transparent, right half blue"),
        "gray-alpha": ("gray-alpha.png", encode(halves((100, 80), (0, 0), (0, 255), "LA"), "PNG"), None,
                       "LA: left transparent, right opaque black"),
        "animated": ("animated.gif", animated_gif(), None, "3-frame GIF, first frame red"),
        "exif-rotated": ("exif-rotated.jpg",
                         encode(halves((160, 80), (255, 0, 0), (0, 0, 255)), "JPEG", quality=95, exif=exif),
                         None, "160x80 red | blue stored, orientation 6 -> 80x160 red on top"),
        "png-as-jpg": ("png-named.jpg", encode(src, "PNG"), None, "PNG bytes with a .jpg name"),
        "grey-jpeg": ("grey.jpg", encode(src.convert("L"), "JPEG", quality=90), None, "greyscale JPEG"),
        "progressive-jpeg": ("progressive.jpg", encode(src, "JPEG", quality=90, progressive=True), None,
                             "progressive JPEG"),
    }
    files = {}
    for name, (file_name, data, reason, note) in cases.items():
        path = out_dir / file_name
        path.write_bytes(data)
        files[name] = BadFile(path, reason, note)
    return files


def _flip_bytes(data: bytes, start: int, count: int) -> bytes:
    damaged = bytearray(data)
    for k in range(start, start + count):
        damaged[k] ^= 0xFF
    return bytes(damaged)
