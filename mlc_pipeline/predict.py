"""Load a model bundle safely and score images with it.

Trust model: `export.pkl` is a pickle, and unpickling runs code. A bundle is therefore a trusted file,
like a script: only load bundles this pipeline wrote. `load_bundle` checks that export.pkl still has
the sha256 recorded in bundle.json *before* unpickling, which catches corruption, truncation and a
swapped file. It is an integrity check, not a signature: whoever can rewrite export.pkl can rewrite
bundle.json too, so the folder itself must be writable only by people you trust.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlc_pipeline.evaluate import OTHER, predict_matrix

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("vocab", "classes", "head", "thresholds", "export_sha256", "image_size")


class BundleError(Exception):
    """A model bundle that is missing, unreadable, or not the file that was recorded."""


@dataclass
class Bundle:
    path: Path
    learn: object                      # fastai Learner
    classes: list[str]                 # real classes
    vocab: list[str]                   # model output columns, may end with "other"
    thresholds: np.ndarray | None      # per vocab column (sigmoid); None for softmax
    head: str
    other_mode: str
    image_size: int
    meta: dict = field(repr=False)


@dataclass
class Prediction:
    path: str
    labels: list[tuple[str, float]]    # claimed classes with their probability, most likely first
    none_of: bool                      # no class claimed: an unknown/"other" image (or an error)
    error: str | None = None           # why the image could not be scored
    probs: dict[str, float] = field(default_factory=dict)


def load_bundle(bundle_dir: str | Path) -> Bundle:
    from mlc_pipeline.hashing import sha256_file  # local: `predict` itself stays numpy-only to import

    bundle_dir = Path(bundle_dir)
    meta_path, export_path = bundle_dir / "bundle.json", bundle_dir / "export.pkl"
    if not bundle_dir.is_dir():
        raise BundleError(f"model bundle not found: {bundle_dir} is not a folder")
    if not meta_path.is_file():
        raise BundleError(f"{meta_path}: missing (not a model bundle folder?)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{meta_path}: unreadable or not JSON ({exc})") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise BundleError(f"{meta_path}: missing key(s) {missing}")
    if not export_path.is_file():
        raise BundleError(f"{export_path}: missing")
    actual = sha256_file(export_path)
    if actual != meta["export_sha256"]:
        raise BundleError(f"{export_path}: sha256 {actual[:12]}... does not match the {meta['export_sha256'][:12]}... "
                          f"recorded in {meta_path.name}; refusing to unpickle a changed file")
    learn = _unpickle_learner(export_path)
    vocab = [str(v) for v in learn.dls.vocab]
    if vocab != list(meta["vocab"]):
        raise BundleError(f"{export_path}: model vocab {vocab} differs from {meta_path.name} vocab {meta['vocab']}")
    thresholds = None if meta["thresholds"] is None else np.asarray(meta["thresholds"], dtype=float)
    if meta["head"] == "sigmoid" and (thresholds is None or len(thresholds) != len(vocab)):
        raise BundleError(f"{meta_path}: a sigmoid bundle needs one threshold per vocab entry")
    return Bundle(path=bundle_dir, learn=learn, classes=list(meta["classes"]), vocab=vocab,
                  thresholds=thresholds, head=meta["head"], other_mode=meta.get("other_mode", "negative"),
                  image_size=int(meta["image_size"]), meta=meta)


def _unpickle_learner(export_path: Path):
    import torch

    with warnings.catch_warnings():
        # fastai warns on every load that pickle is unsafe; we checked the hash just above.
        warnings.filterwarnings("ignore", message=".*insecure pickle.*")
        # fastai.layers applies torch.jit.script when imported, which torch (2.14 here) warns is deprecated:
        # not ours to fix, and printed on every `mlc predict`.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
        from fastai.learner import load_learner
        try:
            return load_learner(export_path, cpu=not torch.cuda.is_available())
        except Exception as exc:  # any unpickling failure: report which file, not a deep traceback
            raise BundleError(f"{export_path}: could not be loaded ({type(exc).__name__}: {exc})") from exc


MAX_PIXELS = 64_000_000      # per image, as curation's default: above 50 MP camera output
BATCH_PIXELS = 100_000_000   # decoded pixels held at once (3 bytes each as RGB): ~300 MB, whatever the batch size


class TooLarge(Exception):
    """An image over the pixel limit: refused from its header, before anything is decoded."""


def _decode(path, max_pixels: int = MAX_PIXELS) -> object:
    from fastai.vision.core import PILImage
    from PIL import Image

    with Image.open(path) as im:         # reads the header only
        width, height = im.size
    if width * height > max_pixels:
        raise TooLarge(f"too large to score: {width}x{height} pixels ({width * height / 1e6:.0f} MP), over the "
                       f"{max_pixels / 1e6:.0f} MP limit")
    return PILImage.create(path)  # opens, fully decodes (load) and converts to RGB


def score_with_errors(bundle: Bundle, paths: list, batch_size: int = 64, max_pixels: int = MAX_PIXELS,
                      batch_pixels: int = BATCH_PIXELS) -> tuple[np.ndarray, dict[int, str]]:
    """Probabilities (N, len(vocab)); rows of images that failed are NaN and listed in the errors
    dict (index -> message). Images are decoded here and scored in chunks of at most `batch_size`
    images and `batch_pixels` decoded pixels, so memory stays bounded however big the inputs; an
    image over `max_pixels` is refused from its header. One bad file costs one row, never the batch:
    a chunk that fails to score is scored again image by image."""
    probs = np.full((len(paths), len(bundle.vocab)), np.nan, dtype=np.float32)
    errors: dict[int, str] = {}
    chunk: list[tuple[int, object]] = []
    held = 0
    for i, path in enumerate(paths):
        try:
            image = _decode(path, max_pixels)
        except TooLarge as exc:
            errors[i] = str(exc)
            continue
        except Exception as exc:  # PIL raises many types for a bad file; each becomes a row error
            errors[i] = f"cannot decode image: {type(exc).__name__}: {exc}"
            continue
        pixels = image.width * image.height
        if chunk and (len(chunk) >= batch_size or held + pixels > batch_pixels):
            _score_chunk(bundle, chunk, batch_size, probs, errors)
            chunk, held = [], 0
        chunk.append((i, image))
        held += pixels
    if chunk:
        _score_chunk(bundle, chunk, batch_size, probs, errors)
    if errors:
        log.warning("%d of %d images could not be scored (first: %s)", len(errors), len(paths),
                    next(iter(errors.values())))
    return probs, errors


def _score_chunk(bundle: Bundle, chunk: list[tuple[int, object]], batch_size: int, probs: np.ndarray,
                 errors: dict[int, str]) -> None:
    learn = bundle.learn
    images = [image for _, image in chunk]
    try:
        batch_probs = _probabilities(learn, images, batch_size)
        if bundle.meta.get("config", {}).get("tta"):
            # Test-time augmentation: the mirror image too, probabilities averaged (trained with flips).
            batch_probs = (batch_probs + _probabilities(learn, [_mirror(im) for im in images], batch_size)) / 2
        probs[[i for i, _ in chunk]] = batch_probs
    except Exception as exc:  # MemoryError included: the others in the chunk must still get a score
        if len(chunk) == 1:
            errors[chunk[0][0]] = f"cannot score image: {type(exc).__name__}: {exc}"
            return
        log.warning("scoring %d images together failed (%s); scoring them one by one", len(chunk),
                    type(exc).__name__)
        for item in chunk:
            _score_chunk(bundle, [item], batch_size, probs, errors)


def _probabilities(learn, images: list, batch_size: int) -> np.ndarray:
    # Items are already PILImages, so test_dl starts its pipeline after the path reader.
    dl = learn.dls.test_dl(images, bs=batch_size, num_workers=0)
    with learn.no_bar(), learn.no_logging():
        batch_probs, _ = learn.get_preds(dl=dl)
    return batch_probs.float().numpy()


def _mirror(image):
    from fastai.vision.core import PILImage
    from PIL import Image
    return PILImage.create(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))


def score_paths(bundle: Bundle, paths: list, batch_size: int = 64) -> np.ndarray:
    """Probabilities (N, len(vocab)) in `bundle.vocab` order; NaN rows for images that failed."""
    return score_with_errors(bundle, paths, batch_size)[0]


def predict_paths(bundle: Bundle, paths: list, batch_size: int = 64, max_pixels: int = MAX_PIXELS) -> list[Prediction]:
    probs, errors = score_with_errors(bundle, paths, batch_size, max_pixels)
    ok = ~np.isnan(probs).any(axis=1)
    decisions = np.zeros(probs.shape, dtype=bool)
    if ok.any():
        decisions[ok] = predict_matrix(probs[ok], bundle.thresholds, bundle.vocab, bundle.head)
    out = []
    for i, path in enumerate(paths):
        if i in errors:
            out.append(Prediction(path=str(path), labels=[], none_of=True, error=errors[i]))
            continue
        row = {c: float(p) for c, p in zip(bundle.vocab, probs[i])}
        labels = sorted(((c, row[c]) for c, hit in zip(bundle.vocab, decisions[i]) if hit and c != OTHER),
                        key=lambda cp: -cp[1])
        out.append(Prediction(path=str(path), labels=labels, none_of=not labels, probs=row))
    return out
