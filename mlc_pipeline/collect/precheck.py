"""What collect can tell of a download as it lands, so that a set is not planned past its `count`.

Curation decides whether an image is usable; collect only plans downloads. Planning at the rate
curation accepted a set's earlier images overshot under heavy rejection (ants 49 and other 54 of 40
with half the files truncated: audit collect27 D8), because the first sample's rate was not the
rest's. So each new download is looked at once, cheaply, for the faults that curation rejects for
sure: a file that does not decode to its end (truncated, corrupt), or whose size curation's
`curate.min_side` / `max_pixels` / `max_aspect` refuse (`imageformat.size_reason`, the same rule).
The file is opened as curation opens it (`formats=DECODED_FORMATS`: an AVIF Pillow decodes fails
here as curation refuses it). A file that passes may still be refused by curation (a duplicate, an
unsupported colour mode, the strict JPEG check, the review), so it counts at `passed_rate`: the share
curation accepted of the set's curated files that would have passed here (1.0 before any, never below
MIN_USABLE_RATE); under 95% exact copies counting it as 1 took the 5 rounds allowed where planning at
the rate took 3 (review31 #2). A file that fails is refused by curation too, so it never counts and
the set is topped up at once. The verdict is only for planning: nothing is recorded, curation still
inspects every file.
"""

from __future__ import annotations

import warnings

from PIL import Image, ImageFile

from mlc_pipeline.collect.sets import MIN_USABLE_RATE
from mlc_pipeline.imageformat import DECODED_FORMATS, size_reason

CHECK_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError,
                Image.DecompressionBombWarning)


def usable_on_arrival(path: str, limits) -> bool | None:
    """Whether the downloaded file at `path` can be usable: False when it cannot decode to its end or
    its size is one curation refuses (`limits`: the config's curate settings); None when the file
    cannot be read here (a cluster worker's disk): planned as before, at the set's usable rate."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:       # a process-wide switch would pass cut files (curate/verify.py)
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=DECODED_FORMATS) as im:
                if size_reason(im.width, im.height, limits) is not None:
                    return False
                if im.format == "JPEG":
                    im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))   # the whole stream is
                im.load()                                                            # still decoded
                return True
    except FileNotFoundError:
        return None
    except CHECK_ERRORS:
        return False


# Curation's reasons (curate/verify.py) that `usable_on_arrival` catches too: a file it passed is never
# refused for one of them (the strict JPEG check's decode-error:CorruptJPEG it does not catch).
CAUGHT = ("truncated", "too-small", "extreme-aspect", "decompression-bomb", "corrupt-header", "not-an-image",
          "empty-file", "unsupported-format:", "decode-error:")


def caught(reason: str) -> bool:
    "Whether `usable_on_arrival` fails every file curation refuses for `reason`."
    return reason.startswith(CAUGHT) and reason != "decode-error:CorruptJPEG"


def passed_rate(tally: dict) -> float:
    """The share curation accepted of a set's curated files that would have passed `usable_on_arrival`:
    accepted / (accepted + duplicates + rejected for reasons it does not catch); 1.0 before any such
    curation, never below MIN_USABLE_RATE."""
    seen = (tally["accepted"] + sum(tally["duplicate"].values())
            + sum(n for reason, n in tally["rejected"].items() if not caught(reason)))
    return max(MIN_USABLE_RATE, tally["accepted"] / seen) if seen else 1.0


def expected_usable(rows: list[dict], verdicts: dict[int, bool], rate: float, passed: float) -> float:
    """Usable images a set's downloads not curated yet (`rows`) are expected to give: `passed`
    (`passed_rate`) for each that passed `usable_on_arrival`, none for one that failed it, `rate` for
    each not looked at (an earlier run's)."""
    return sum((passed if verdicts[r["id"]] else 0.0) if r["id"] in verdicts else rate for r in rows)
