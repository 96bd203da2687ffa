"""Strict JPEG decoding: what libjpeg only warns about rejects the file.

libjpeg does not fail on a JPEG whose entropy-coded data is corrupt or ends before the last block:
it *warns* ("Corrupt JPEG data: ...", "Premature end of JPEG file"), fills what it could not decode
with grey, and Pillow passes the picture on as a normal decode. A JPEG cut short with an EOI marker
appended, or with a few bytes of its scan damaged, therefore verified, and being larger than the
intact original it could be kept over it (the curation29 audit, finding 5).

simplejpeg decodes through libjpeg-turbo's TurboJPEG API with `strict=True` (TJFLAG_STOPONWARNING):
the first warning stops the decode and comes back as a ValueError carrying libjpeg's own message
(jerror.h), which `damage_reason` maps to a reason code. It also decodes at a reduced scale and
straight to greyscale, as Pillow's `draft("L", ...)` does (the same libjpeg, the same IDCT): for the
hash's greyscale draft it *replaces* Pillow's decode (the pixels are identical, tested on every
fixture), so strictness costs curation no second decode. Everything else (a full decode, CMYK, an
MPO's frames) still goes through Pillow, after a strict pass at 1/8 scale (the whole stream is still
entropy-decoded: that is where the warnings come from).
"""

from __future__ import annotations

import simplejpeg
from PIL import Image

FORMATS = ("JPEG", "MPO")        # Pillow's names for what libjpeg decodes

# libjpeg's messages (jerror.h) that say the data is cut short, or corrupt. Any other complaint (a
# feature simplejpeg's build lacks, a harmless header warning such as an unknown JFIF revision or a
# bad ICC marker) leaves the verdict to Pillow's decode, as before.
TRUNCATED = ("Premature end of JPEG file",              # JWRN_JPEG_EOF: the file ends before EOI
             "premature end of data segment")           # JWRN_HIT_MARKER: a marker before the last block
CORRUPT = ("Corrupt JPEG data",                         # bad Huffman/arithmetic code, extraneous bytes, lost RST
           "Inconsistent progression sequence",         # JWRN_BOGUS_PROGRESSION
           "Unsupported marker type")                   # damaged scan bytes that read as a marker
HARMLESS = ("bad ICC marker",)                          # JWRN_BOGUS_ICC: the pixels are whole
CORRUPT_REASON = "decode-error:CorruptJPEG"


class DamagedJpeg(ValueError):
    "libjpeg said the data is cut short or corrupt; `reason` is the reason code, the message libjpeg's."

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def damage_reason(message: str) -> str | None:
    "The reason code for one of libjpeg's messages; None when it does not say the data is damaged."
    if any(words in message for words in TRUNCATED):
        return "truncated"
    if message.startswith(CORRUPT) and not any(words in message for words in HARMLESS):
        return CORRUPT_REASON
    return None


def draft_size(size: tuple[int, int], requested: tuple[int, int]) -> tuple[int, int]:
    "The size Pillow's JPEG `draft` decodes to: the largest of 1/8, 1/4, 1/2, 1 still >= `requested`."
    ratio = min(size[0] // requested[0], size[1] // requested[1])
    scale = next((s for s in (8, 4, 2, 1) if ratio >= s), 1)     # a side under the request: whole size, as Pillow
    return -(-size[0] // scale), -(-size[1] // scale)


def decode_strict(data: bytes, im: Image.Image, draft: tuple[str, tuple[int, int]] | None
                  ) -> Image.Image | None:
    """Decode the JPEG `data` (opened by Pillow as `im`, nothing loaded yet) with libjpeg's warnings
    as errors; raise DamagedJpeg when one says the data is damaged.

    For a greyscale `draft` of a one-frame greyscale or colour JPEG, return the frame Pillow's
    `im.draft(*draft); im.load()` gives (the same pixels, `im.info` with its EXIF). Otherwise (no
    draft, CMYK, several frames, or a scale Pillow would not pick) return None once the stream (an
    MPO's first image) decoded cleanly at 1/8 scale: Pillow decodes it next, as before."""
    as_draft = (draft is not None and draft[0] == "L" and im.mode in ("L", "RGB")
                and getattr(im, "n_frames", 1) == 1)
    width, height = draft_size(im.size, draft[1]) if as_draft else (1, 1)     # (1, 1): the smallest scale
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="CMYK" if im.mode == "CMYK" else "GRAY",
                                        min_width=width, min_height=height, strict=True)
    except ValueError as e:
        reason = damage_reason(str(e))
        if reason is None:
            return None
        raise DamagedJpeg(reason, str(e)) from None
    if not as_draft or pixels.shape[:2] != (height, width):
        return None
    frame = Image.fromarray(pixels[:, :, 0])
    frame.info = dict(im.info)      # exif_orientation reads the EXIF from it
    return frame
