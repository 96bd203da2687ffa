"""Files as they come off cameras, phones and the web, made by Pillow from the fixture photos: the
formats and sizes the realfiles27 audit found mishandled (TIFF, JFIF, AVIF, HEIC, SVG, no extension,
a 196 MP PNG of 25 KB, a 100 MP one), for folder mode, the downloader and `mlc predict`."""

from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image, features

from helpers import FIXTURES

ANTS = FIXTURES / "hymenoptera" / "ants"


def jpgs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() == ".jpg")


AVIF = "avif" in features.get_supported_modules()    # Pillow 11.2 and later, built with libavif (this one is)
# An iPhone's HEIC begins so: an ftyp box of brands heic, mif1 (Pillow writes none; this Pillow decodes none)
HEIC_HEAD = b"\x00\x00\x00\x1cftypheic\x00\x00\x00\x00mif1heicmiaf"


def camera_folder(root: Path) -> dict[str, str]:
    """ants/ as real files come off cameras, phones and the web, each made by Pillow from a fixture photo:
    path in the folder -> the Content-Type it must be served as (files not listed: not served)."""
    (root / "ants").mkdir(parents=True)
    photos = [Image.open(ANTS / name).convert("RGB") for name in jpgs(ANTS)[:8]]
    types = {"photo.jpg": ("JPEG", "image/jpeg"), "scan.tif": ("TIFF", "image/tiff"),
             "scan.tiff": ("TIFF", "image/tiff"), "old.jfif": ("JPEG", "image/jpeg"), "web.webp": ("WEBP", "image/webp"),
             "paint.bmp": ("BMP", "image/bmp"), "cut.png": ("PNG", "image/png"),
             **({"phone.avif": ("AVIF", "image/avif")} if AVIF else {})}
    for (name, (fmt, _)), photo in zip(types.items(), photos):
        photo.save(root / "ants" / name, fmt)
    served = {name: media for name, (_, media) in types.items()}
    shutil.copy(root / "ants" / "photo.jpg", root / "ants" / "IMG_0001")                # no extension: its bytes
    served["IMG_0001"] = "image/jpeg"
    if AVIF:
        shutil.copy(root / "ants" / "phone.avif", root / "ants" / "renamed.heic")      # an AVIF named .heic
        served["renamed.heic"] = "image/avif"
    (root / "ants" / "IMG_0002.HEIC").write_bytes(HEIC_HEAD + (root / "ants" / "photo.jpg").read_bytes())
    (root / "ants" / "IMG_0003.jpg").write_bytes(HEIC_HEAD + (root / "ants" / "photo.jpg").read_bytes())
    (root / "ants" / "drawing.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    (root / "ants" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    huge = Image.new("1", (14000, 14000))                                   # 196 MP in ~25 KB, as the audit's
    huge.paste(photos[0].convert("1"), (0, 0))
    huge.save(root / "ants" / "pano.png")
    big = Image.new("1", (10000, 10000))                                    # 100 MP: Pillow warns, we serve it
    big.paste(photos[1].convert("1"), (0, 0))
    big.save(root / "ants" / "big.png")
    served["big.png"] = "image/png"
    return {f"ants/{name}": media for name, media in served.items()}
