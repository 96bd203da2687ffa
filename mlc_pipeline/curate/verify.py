"""Image verification and normalised loading.

`check_image` decides whether a file is a usable training image and, if not, gives a short stable
reason code. It is stricter than fastai's `verify_images` (open + draft + load, any exception =
failed): it also rejects empty files, decompression bombs (from the header, before decoding), files
whose *whole* stream does not decode, JPEGs libjpeg only warns about (cut short, corrupt entropy data:
jpegcheck.py), tiny images, extreme aspect ratios and colour modes we cannot turn into RGB faithfully.

Reason codes (stable; other modules and reports key on them):
    empty-file, file-too-large, read-error:<Exc>, not-an-image, corrupt-header,
    unsupported-format:<FMT>, decompression-bomb, too-many-frames, too-small, extreme-aspect,
    unsupported-mode, truncated, decode-error:<Exc> (decode-error:CorruptJPEG: libjpeg's "Corrupt JPEG data")

Loading an accepted file as RGB (`load_rgb`, `to_rgb`) and the errors Pillow raises on bad data
(`DECODE_ERRORS`) live in the core's images.py, which the later stages use without importing curation.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import struct
import warnings
from dataclasses import asdict, dataclass

from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

from mlc_pipeline.curate import jpegcheck
from mlc_pipeline.imageformat import DECODED_FORMATS, image_extension, size_reason
from mlc_pipeline.images import DECODE_ERRORS, other_format

# Formats we decode. Everything else (EPS runs Ghostscript, PSD, ICO, ...) is refused up front.
DEFAULT_FORMATS = DECODED_FORMATS  # JPEG includes MPO (imageformat.py: `mlc predict` refuses what curation does)
_PLUGINS = {"JPEG": "JpegImagePlugin", "PNG": "PngImagePlugin", "GIF": "GifImagePlugin",
            "WEBP": "WebPImagePlugin", "BMP": "BmpImagePlugin", "TIFF": "TiffImagePlugin"}


def load_format_plugins(formats: tuple[str, ...] = DEFAULT_FORMATS) -> None:
    """Import the Pillow plugins of `formats` only. `Image.open(formats=...)` otherwise imports all
    ~40 of Pillow's plugins the first time a listed format is not registered yet (~55 ms of CPU per
    process: a tenth of a worker's time on 398 thumbnails); these six cost ~3 ms."""
    Image.preinit()
    for fmt in formats:
        if fmt.upper() not in Image.OPEN:
            if fmt.upper() in _PLUGINS:
                importlib.import_module(f"PIL.{_PLUGINS[fmt.upper()]}")
            else:
                Image.init()   # a format we have no name for: let Pillow load everything
                return

# Modes `to_rgb` converts faithfully. F (float), LAB, HSV, La, ... would need guesses about ranges or
# colour spaces, so they are rejected as `unsupported-mode` instead of silently mis-rendered.
SUPPORTED_MODES = frozenset(
    {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
     "I", "I;16", "I;16L", "I;16B", "I;16N"}
)

# Same table as PIL.ImageOps.exif_transpose; kept here to transpose small derived images cheaply.
ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}



@dataclass(frozen=True)
class VerifyLimits:
    max_pixels: int = 64_000_000   # 64 MP: above 50 MP camera output; <= 192 MB once decoded as RGB
    min_side: int = 64             # smaller images carry too little signal for training
    max_aspect: float = 4.0        # long/short side; beyond this a square crop loses most of the photo
    max_bytes: int = 64 * 2**20    # the file is read into memory once (hash + decode)
    max_frames: int = 200          # every frame of an animation is decoded to catch truncation,
    max_frame_pixels_factor: int = 4  # ...so all frames together may hold 4 x max_pixels at most
    formats: tuple[str, ...] = DEFAULT_FORMATS


@dataclass(frozen=True)
class ImageCheck:
    ok: bool
    reason: str | None = None      # None when ok, else one of the reason codes above
    format: str | None = None
    mode: str | None = None
    width: int | None = None       # after EXIF orientation
    height: int | None = None
    frames: int | None = None


def check_image(path: str | os.PathLike, limits: VerifyLimits = VerifyLimits()) -> ImageCheck:
    "Check that `path` is a complete, decodable image within `limits`; the whole stream is decoded."
    data, reason = read_limited(path, limits)
    if data is None:
        return ImageCheck(ok=False, reason=reason)
    check, _ = decode_checked(data, limits)
    return check


def read_limited(path: str | os.PathLike, limits: VerifyLimits) -> tuple[bytes | None, str | None]:
    "Read a file's bytes unless it is empty or larger than `limits.max_bytes`; else (None, reason)."
    try:
        size = os.stat(path).st_size
        if size == 0:
            return None, "empty-file"
        if size > limits.max_bytes:
            return None, "file-too-large"
        with open(path, "rb") as f:
            # Ask for what stat saw (+1), not max_bytes + 1: Python allocates the whole request, and a
            # 64 MiB allocation per file was a sixth of a thumbnail's inspect_file time.
            data = f.read(size + 1)
            if len(data) > size:  # the file grew between stat and read
                data += f.read(limits.max_bytes + 1 - len(data))
    except OSError as e:
        return None, f"read-error:{type(e).__name__}"
    if len(data) > limits.max_bytes:
        return None, "file-too-large"
    return data, None


def decode_checked(data: bytes, limits: VerifyLimits, draft: tuple[str, tuple[int, int]] | None = None
                   ) -> tuple[ImageCheck, Image.Image | None]:
    """Check and fully decode `data`; return the check and, when ok, the loaded first frame.

    `draft=(mode, (w, h))` lets JPEG decode at a reduced scale (libjpeg still entropy-decodes the
    whole stream, so truncation is still caught; a greyscale draft comes from jpegcheck's strict
    decode, the same pixels as Pillow's). EXIF orientation is *not* applied to the returned
    frame; `check.width/height` are oriented when the file decodes (the header's otherwise), and
    `exif_orientation(frame)` gives the tag.
    """
    require_strict_decoding()
    im, reason = _open(data, limits)
    if im is None:
        return ImageCheck(ok=False, reason=reason), None
    fields = dict(format=im.format, mode=im.mode, width=im.width, height=im.height)
    try:
        reason = _header_reason(im, limits)  # size rules are orientation-free: no EXIF needed yet
        if reason is not None:
            return ImageCheck(ok=False, reason=reason, **fields), None
        n_frames = getattr(im, "n_frames", 1)
        fields.update(frames=n_frames)
        if n_frames > limits.max_frames or n_frames * im.width * im.height > (
                limits.max_frame_pixels_factor * limits.max_pixels):
            return ImageCheck(ok=False, reason="too-many-frames", **fields), None
        # A JPEG is decoded strictly first (jpegcheck.py: libjpeg's warnings of a cut or corrupt stream
        # reject it); for the hash's greyscale draft that decode is the one kept, else Pillow's follows.
        first = jpegcheck.decode_strict(data, im, draft) if im.format in jpegcheck.FORMATS else None
        if first is None:
            if draft is not None and im.format == "JPEG" and n_frames == 1:
                im.draft(*draft)
            im.load()
            first = im.copy() if n_frames > 1 else im
            for k in range(1, n_frames):  # the whole file must decode, not just what we keep
                im.seek(k)
                im.load()
        # Only now: PNG keeps EXIF after the pixel data, so reading it earlier would decode the image.
        if exif_orientation(first) in (5, 6, 7, 8):
            fields.update(width=fields["height"], height=fields["width"])
    except jpegcheck.DamagedJpeg as e:
        return ImageCheck(ok=False, reason=e.reason, **fields), None
    except DECODE_ERRORS as e:
        return ImageCheck(ok=False, reason=_decode_reason(e), **fields), None
    return ImageCheck(ok=True, **fields), first


def require_strict_decoding() -> None:
    "Pillow's process-wide LOAD_TRUNCATED_IMAGES switch would let truncated files pass silently."
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; verification needs it False")


def exif_orientation(im: Image.Image) -> int:
    "EXIF orientation tag (1..8); 1 when absent or unreadable garbage."
    orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
    return orientation if orientation in range(1, 9) else 1


def _open(data: bytes, limits: VerifyLimits) -> tuple[Image.Image | None, str | None]:
    "Parse the header only (no pixel decoding); Pillow's own bomb warning becomes an error here."
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            load_format_plugins(limits.formats)
            return Image.open(io.BytesIO(data), formats=limits.formats), None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            return None, "decompression-bomb"
        except UnidentifiedImageError:
            return None, _unidentified_reason(data)
        except DECODE_ERRORS as e:  # e.g. libwebp refusing a cut-off file at open time
            if _riff_truncated(data):
                return None, "truncated"
            return None, f"decode-error:{type(e).__name__}"


def _unidentified_reason(data: bytes) -> str:
    "Name what an unopenable file is: another image format, a broken header, or not an image."
    if _riff_truncated(data):
        return "truncated"
    other = other_format(io.BytesIO(data))     # header only: an EPS or PSD told apart from random bytes
    if other is not None:
        return f"unsupported-format:{other}"
    if image_extension(data) is not None:     # starts like an image but cannot be parsed
        return "corrupt-header"
    return "not-an-image"


def _riff_truncated(data: bytes) -> bool:
    "WebP states its size in the RIFF header; libwebp refuses short files before Pillow can say why."
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return False
    return struct.unpack("<I", data[4:8])[0] + 8 > len(data)


def _header_reason(im: Image.Image, limits: VerifyLimits) -> str | None:
    "Everything decidable before decoding pixels."
    reason = size_reason(*im.size, limits)
    if reason is None and im.mode not in SUPPORTED_MODES:
        return "unsupported-mode"
    return reason


# The reasons that depend on VerifyLimits: a file rejected for another one stays rejected whatever
# the limits (it is empty, broken or not an image); one rejected for these may pass other limits.
LIMIT_REASONS = ("file-too-large", "decompression-bomb", "too-many-frames", "too-small", "extreme-aspect")


def limits_key(limits: VerifyLimits, strict_jpeg: bool = True) -> str:
    """The limits a verdict was reached under, as recorded with it in the catalog (JSON), and that
    JPEGs were decoded strictly (libjpeg's warnings reject, since 2026-12-07): a verdict recorded
    without it let a JPEG cut short or with a corrupt scan pass, so such a JPEG is inspected again."""
    return json.dumps({**asdict(limits), **({"jpeg": "strict"} if strict_jpeg else {})}, sort_keys=True)


def strict_jpeg_verdict(key: str | None) -> bool:
    "Whether a verdict recorded under `key` (`limits_key`) decoded JPEGs strictly."
    try:
        return json.loads(key).get("jpeg") == "strict"
    except (TypeError, ValueError, AttributeError):     # NULL, not JSON, or not an object: from before
        return False


def looks_jpeg(path: str) -> bool:
    "A JPEG by its first bytes (its name may lie); a file that cannot be read counts, inspecting it says why."
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"\xff\xd8"
    except OSError:
        return True


def recorded_reason(width: int, height: int, n_bytes: int, frames: int, limits: VerifyLimits) -> str | None:
    """`check_image`'s verdict under `limits` on a file that decoded fine, from its recorded size, byte
    count and frame count alone (no reading, no decoding): the rules in the order check_image applies them."""
    if n_bytes > limits.max_bytes:
        return "file-too-large"
    reason = size_reason(width, height, limits)
    if reason is None and (frames > limits.max_frames
                           or frames * width * height > limits.max_frame_pixels_factor * limits.max_pixels):
        return "too-many-frames"
    return reason


def _decode_reason(e: BaseException) -> str:
    if isinstance(e, Image.DecompressionBombError):
        return "decompression-bomb"
    # Pillow's wording when the stream ends early (LOAD_TRUNCATED_IMAGES is False).
    if isinstance(e, OSError) and "truncated" in str(e).lower():
        return "truncated"
    return f"decode-error:{type(e).__name__}"
