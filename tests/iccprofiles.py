"""ICC v2 profiles built by hand, for the colour-management tests (the box has no .icc file, and
ImageCms.createProfile makes only sRGB, Lab and XYZ).

- `ADOBE_RGB`, `DISPLAY_P3`: matrix/TRC RGB profiles as cameras and phones embed them (Adobe RGB 1998:
  gamma 563/256; Display P3: the sRGB curve on P3 primaries), primaries adapted to D50.
- `SRGB_TABLE`: sRGB as most files tag it (IEC 61966-2.1: a 1024-entry curve), not LittleCMS's own.
- `LINEAR_GREY`: a grey profile whose numbers are linear light (gamma 1.0).
- `LINEAR_CMYK`: a CMYK profile (lut16, PCS XYZ) whose numbers say, per channel, linear light
  = (1 - C)(1 - K): multilinear in its inputs, so LittleCMS's 2-point grid holds it exactly.
`srgb_to_linear` / `linear_to_srgb` encode a test photo in those spaces, so the sRGB original is
what a colour-managed viewer shows of each file.
"""

from __future__ import annotations

import itertools
import struct

import numpy as np

D50 = (0.9642, 1.0, 0.8249)
SRGB_D50 = ((0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141))   # rXYZ, gXYZ, bXYZ


def _s15(x: float) -> bytes:
    return struct.pack(">i", round(x * 65536))


def _xyz(x: float, y: float, z: float) -> bytes:
    return b"XYZ " + b"\0" * 4 + _s15(x) + _s15(y) + _s15(z)


def _pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def _curv_gamma(g: float) -> bytes:
    return _pad(b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(g * 256)))


def _curv_table(values: list[int]) -> bytes:
    return _pad(b"curv" + b"\0" * 4 + struct.pack(">I", len(values)) + b"".join(struct.pack(">H", v) for v in values))


def _desc(text: str) -> bytes:
    a = text.encode() + b"\0"
    return _pad(b"desc" + b"\0" * 4 + struct.pack(">I", len(a)) + a + b"\0" * 8 + b"\0" * 70)


def _profile(name: str, device_class: bytes, space: bytes, tags: list[tuple[bytes, bytes]]) -> bytes:
    tags = [(b"desc", _desc(name)), (b"cprt", _pad(b"text" + b"\0" * 4 + b"none\0")), (b"wtpt", _xyz(*D50))] + tags
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    header = (struct.pack(">I", offset + len(data)) + b"lcms" + bytes([2, 0x10, 0, 0]) + device_class + space
              + b"XYZ " + struct.pack(">6H", 2020, 1, 1, 0, 0, 0) + b"acsp" + b"APPL" + b"\0" * 20
              + struct.pack(">I", 0) + _s15(D50[0]) + _s15(D50[1]) + _s15(D50[2]) + b"lcms" + b"\0" * 44)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


def srgb_to_linear(v: np.ndarray) -> np.ndarray:
    "sRGB numbers 0..1 -> linear light 0..1 (IEC 61966-2.1)."
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * np.power(np.maximum(v, 0), 1 / 2.4) - 0.055)


def rgb_profile(name: str, r, g, b, trc: bytes) -> bytes:
    return _profile(name, b"mntr", b"RGB ", [(b"rXYZ", _xyz(*r)), (b"gXYZ", _xyz(*g)), (b"bXYZ", _xyz(*b)),
                                              (b"rTRC", trc), (b"gTRC", trc), (b"bTRC", trc)])


def _srgb_curve() -> bytes:
    return _curv_table([round(float(srgb_to_linear(np.float64(i / 1023))) * 65535) for i in range(1024)])


def _linear_cmyk() -> bytes:
    "lut16 ('mft2') A2B0: CMYK -> XYZ (u1Fixed15), identity matrix and curves, a 2-point grid."
    grid = b""
    for c, m, y, k in itertools.product((0, 1), repeat=4):    # the first input varies slowest
        rgb = np.array([(1 - c) * (1 - k), (1 - m) * (1 - k), (1 - y) * (1 - k)], float)
        xyz = np.array(SRGB_D50).T @ rgb
        grid += b"".join(struct.pack(">H", min(65535, round(v * 32768))) for v in xyz)
    identity = struct.pack(">HH", 0, 65535)
    lut = (b"mft2" + b"\0" * 4 + bytes([4, 3, 2, 0]) + b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
           + struct.pack(">HH", 2, 2) + identity * 4 + grid + identity * 3)
    return _profile("Linear CMYK (handmade)", b"prtr", b"CMYK", [(b"A2B0", _pad(lut))])


ADOBE_RGB = rgb_profile("Adobe RGB (1998) (handmade)", (0.60974, 0.31111, 0.01947), (0.20528, 0.62567, 0.06087),
                        (0.14919, 0.06322, 0.74457), _curv_gamma(563 / 256))
DISPLAY_P3 = rgb_profile("Display P3 (handmade)", (0.5151, 0.2412, -0.0011), (0.2920, 0.6922, 0.0419),
                         (0.1571, 0.0666, 0.7841), _srgb_curve())
SRGB_TABLE = rgb_profile("sRGB IEC61966-2.1 (handmade)", *SRGB_D50, _srgb_curve())
LINEAR_GREY = _profile("Linear grey (handmade)", b"mntr", b"GRAY", [(b"kTRC", _curv_gamma(1.0))])
LINEAR_CMYK = _linear_cmyk()
