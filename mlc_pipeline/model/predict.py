"""Score images with a model bundle (see model/bundle.py for what a bundle is and its trust model)."""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from mlc_pipeline import progress
from mlc_pipeline.imageformat import DECODED_FORMATS, HEAD_BYTES, size_reason, unsupported_format
from mlc_pipeline.images import load_rgb, other_format
from mlc_pipeline.model.bundle import Bundle
from mlc_pipeline.model.metrics import OTHER, predict_matrix

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    path: str
    labels: list[tuple[str, float]]    # claimed classes with their probability, most likely first
    none_of: bool                      # no class claimed: an unknown/"other" image (or an error)
    error: str | None = None           # why the image could not be scored
    probs: dict[str, float] = field(default_factory=dict)
    note: str | None = None            # scored, but unlike every image the model was trained on (why)


@dataclass(frozen=True)
class TrainedOn:
    """Curation's rules on the images a model was trained on (`imageformat.size_reason`'s, without its
    pixel limit: `max_pixels` is predict's own), and where they come from, as a row says it."""
    min_side: int
    max_aspect: float
    source: str                        # "curate settings of default/v1", "curation's defaults"
    max_pixels: float = float("inf")


MAX_PIXELS = 64_000_000      # per image, as curation's default: above 50 MP camera output
BATCH_PIXELS = 100_000_000   # decoded pixels held at once (3 bytes each as RGB): ~300 MB, whatever the batch size


CANNOT_SCORE = "cannot score image"
# What decoding a bad file raises (Pillow's plugins: OSError, SyntaxError, struct.error, ...);
# any other type on every input is the code's fault, not the files'
BAD_FILE = (OSError, ValueError, SyntaxError, EOFError, struct.error, MemoryError, ArithmeticError, IndexError)


class ScoringFailed(RuntimeError):
    """No decoded image could be scored at all: a fault of the bundle or the code, not of the images."""


class TooLarge(Exception):
    """An image over the pixel limit: refused from its header, before anything is decoded."""


class NotScored(Exception):
    """An input curation would refuse before training on it (empty, no image, a format it does not
    take, too small): refused from its header, with curation's reason code."""


_PILLOW_LIMIT = threading.Lock()


@contextmanager
def pillow_limit_at_least(max_pixels: int) -> Iterator[None]:
    """Pillow's process-wide bomb limit raised to a `--max-pixels` above it for the block (one block at
    a time): a 196 MP image under a user limit of 250 MP was refused with Pillow's text. This module's
    own check, from the header, is the limit then."""
    from PIL import Image
    if Image.MAX_IMAGE_PIXELS is None or max_pixels <= Image.MAX_IMAGE_PIXELS:
        yield
        return
    with _PILLOW_LIMIT:
        before, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = before


def _decode(path, max_pixels: int = MAX_PIXELS) -> object:
    """The picture as the dataset build decodes every training image (curate's `load_rgb`: EXIF
    orientation applied, transparency on white, 16-bit to its top 8 bits, first frame), so a file
    scores as its published dataset copy would. fastai's own loader (`PILImage.create(path)`) drops
    EXIF and alpha and clips 16-bit to 255: a 16-bit PNG was scored as a white picture."""
    from fastai.vision.core import PILImage
    from PIL import Image

    # Pillow's own bomb check (a warning over 89 MP, an error over 179 MP) runs in Image.open: its raw
    # text ("could be decompression bomb DOS attack") is not the product's, nor is its limit
    with warnings.catch_warnings(), pillow_limit_at_least(max_pixels):
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:         # reads the header only
                width, height = im.size
        except Image.DecompressionBombError as exc:
            found = re.search(r"\((\d+) pixels\)", str(exc))
            width, height = (int(found.group(1)), 1) if found else (max_pixels + 1, 1)
            size = f"{width / 1e6:.0f} MP"
        else:
            size = f"{width}x{height} pixels ({width * height / 1e6:.0f} MP)"
        if width * height > max_pixels:
            raise TooLarge(f"too large to score: {size}, over the {max_pixels / 1e6:.0f} MP limit")
        return PILImage.create(load_rgb(path))  # fully decoded RGB; create() only marks it a PILImage, no copy


def _screen(path, rules: TrainedOn) -> str | None:
    """What curation would say of the file before training on it, from its header (before `_decode`):
    NotScored for an empty file, no image, a format curation refuses (the model saw no such image:
    `mlc predict` scored an AVIF file as if it knew it); a note for a side or an aspect it refuses (the
    picture is scored, upscaled or squeezed as no training image was: a small photo still gets an
    answer, and the note says how far it is from what the model knows); None otherwise. Too many
    pixels are `_decode`'s to refuse, against predict's own limit."""
    from PIL import Image, UnidentifiedImageError

    if os.stat(path).st_size == 0:
        raise NotScored("not scored: an empty file (curation: empty-file)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:     # the header only, as curation opens it: its formats alone (JPEG's plugin takes MPO too)
            with Image.open(path, formats=DECODED_FORMATS) as im:
                width, height = im.size
        except Image.DecompressionBombError:
            return None
        except UnidentifiedImageError:
            raise NotScored(_unidentified(path)) from None
    reason = size_reason(width, height, rules)
    if reason == "too-small":       # scored all the same: a user asking about a small picture wants an answer
        return (f"{width}x{height} pixels, under the {rules.min_side} px side every training image had, upscaled "
                f"as no training image was (curation: too-small, by {rules.source})")
    if reason == "extreme-aspect":
        return (f"{width}x{height} pixels, longer than {rules.max_aspect:g}:1 as no training image was "
                f"(curation: extreme-aspect, by {rules.source})")
    return None


def _unidentified(path) -> str:
    """Why a file curation's formats do not open is not scored: another format Pillow names from the
    header (AVIF, PSD, EPS: never decoded), a photo format not decoded here (HEIC), or no image."""
    other = other_format(path)
    if other is None:
        with open(path, "rb") as f:
            other = unsupported_format(f.read(HEAD_BYTES))
        if other is None:
            return "not scored: not an image (curation: not-an-image)"
        return f"not scored: {other}, a format not decoded here (curation: unsupported-format)"
    return (f"not scored: {other}, a format curation does not take (only {', '.join(DECODED_FORMATS)}): the model "
            f"was trained on none (curation: unsupported-format:{other})")


def score_with_errors(bundle: Bundle, paths: list, batch_size: int = 64, max_pixels: int = MAX_PIXELS,
                      batch_pixels: int = BATCH_PIXELS, rules: TrainedOn | None = None,
                      notes: dict[int, str] | None = None) -> tuple[np.ndarray, dict[int, str]]:
    """Probabilities (N, len(vocab)); rows of images that failed are NaN and listed in the errors
    dict (index -> message). Images are decoded here and scored in chunks of at most `batch_size`
    images and `batch_pixels` decoded pixels, so memory stays bounded however big the inputs; an
    image over `max_pixels` is refused from its header. One bad file costs one row, never the batch:
    a chunk that fails to score is scored again image by image. With `rules`, each file is first
    screened as curation would (`_screen`): refused ones are errors, and `notes` gets the others' notes."""
    probs, _, errors = _score(bundle, paths, batch_size, max_pixels, batch_pixels, embed=False, rules=rules,
                              notes=notes)
    return probs, errors


def score_and_embed(bundle: Bundle, paths: list, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """`score_with_errors`, plus each image's features: what the network's last linear layer reads
    (the pooled body for mlcnet, the head's hidden layer for a torchvision net), L2-normalised, from
    the plain picture (not its mirror under TTA). Rows of failed images are NaN."""
    return _score(bundle, paths, batch_size, MAX_PIXELS, BATCH_PIXELS, embed=True)


def _score(bundle: Bundle, paths: list, batch_size: int, max_pixels: int, batch_pixels: int, embed: bool,
           rules: TrainedOn | None = None, notes: dict[int, str] | None = None
           ) -> tuple[np.ndarray, np.ndarray | None, dict[int, str]]:
    probs = np.full((len(paths), len(bundle.vocab)), np.nan, dtype=np.float32)
    feats = np.full((len(paths), _last_linear(bundle.learn.model).in_features), np.nan, dtype=np.float32) if embed else None
    errors: dict[int, str] = {}
    chunk: list[tuple[int, object]] = []
    held = odd = 0                    # odd: decoding failures of a type no bad file raises (a bug's)
    with progress.bar("score images", total=len(paths)) as bar:
        for i, path in enumerate(paths):
            try:
                note = None if rules is None else _screen(path, rules)
                image = _decode(path, max_pixels)
            except (TooLarge, NotScored) as exc:
                errors[i] = str(exc)
                bar.advance()
                continue
            except Exception as exc:  # PIL raises many types for a bad file; each becomes a row error
                errors[i] = f"cannot decode image: {type(exc).__name__}: {exc}"
                odd += not isinstance(exc, BAD_FILE)
                bar.advance()
                continue
            if note is not None and notes is not None:
                notes[i] = note
            pixels = image.width * image.height
            if chunk and (len(chunk) >= batch_size or held + pixels > batch_pixels):
                _score_and_release(bundle, chunk, batch_size, probs, errors, feats)
                bar.advance(len(chunk))
                chunk, held = [], 0
            chunk.append((i, image))
            held += pixels
        if chunk:
            _score_and_release(bundle, chunk, batch_size, probs, errors, feats)
            bar.advance(len(chunk))
    failed = [message for message in errors.values() if message.startswith(CANNOT_SCORE)]
    decoded = len(paths) - len(errors) + len(failed)
    if decoded >= 2 and len(failed) == decoded:
        # Every picture that decoded failed in the network: the bundle or the code is at fault, not
        # the pictures, and NaN rows would pass for "unreadable images" (metrics on nothing, mining
        # that adds nothing).
        raise ScoringFailed(f"{bundle.path.name}: none of the {decoded} decoded images could be scored "
                            f"({failed[0]})")
    if len(paths) >= 2 and odd == len(paths):      # the same for the decoder (the tests23 audit)
        raise ScoringFailed(f"none of the {len(paths)} images could be decoded, each with an error no bad file "
                            f"raises ({errors[0]})")
    if errors:
        log.warning("%d of %d images could not be scored (first: %s)", len(errors), len(paths),
                    next(iter(errors.values())))
    return probs, feats, errors


def _last_linear(model):
    import torch.nn as nn
    beside = getattr(model, "rot", None)     # nets.WithRotationHead: a training-time layer, not the classes'
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m is not beside]
    if not linears:
        raise ValueError("the network has no linear layer to read features from")
    return linears[-1]


def _score_and_release(bundle: Bundle, chunk: list[tuple[int, object]], batch_size: int, probs: np.ndarray,
                       errors: dict[int, str], feats: np.ndarray | None) -> None:
    """`_score_chunk`, then the chunk's decoded pixels freed at once. fastai's test_dl holds the
    images in a reference cycle (TfmdDL <-> its loader) that only Python's full collection frees, and
    that runs ever more rarely as a run goes on: measured on 6,000 pool images, peak memory grew by
    ~30 KB an image, the decoded pictures of many chunks waiting to be collected."""
    try:
        _score_chunk(bundle, chunk, batch_size, probs, errors, feats)
    finally:
        for _, image in chunk:
            image.close()


def _score_chunk(bundle: Bundle, chunk: list[tuple[int, object]], batch_size: int, probs: np.ndarray,
                 errors: dict[int, str], feats: np.ndarray | None = None) -> None:
    learn = bundle.learn
    images = [image for _, image in chunk]
    captured: list[np.ndarray] = []
    hook = None if feats is None else _last_linear(learn.model).register_forward_pre_hook(
        lambda module, args: captured.append(args[0].detach().float().cpu().numpy()))
    try:
        try:
            batch_probs = _probabilities(learn, images, batch_size)
        finally:
            if hook is not None:
                hook.remove()
        if bundle.meta.get("config", {}).get("tta"):
            # Test-time augmentation: the mirror image too, probabilities averaged (trained with flips).
            mirrors = [_mirror(im) for im in images]
            try:
                batch_probs = (batch_probs + _probabilities(learn, mirrors, batch_size)) / 2
            finally:
                for mirror in mirrors:       # freed now, not when the loader's cycle is collected
                    mirror.close()
        probs[[i for i, _ in chunk]] = batch_probs
        if feats is not None:
            f = np.concatenate(captured)
            feats[[i for i, _ in chunk]] = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    except Exception as exc:  # MemoryError included: the others in the chunk must still get a score
        if len(chunk) == 1:
            errors[chunk[0][0]] = f"{CANNOT_SCORE}: {type(exc).__name__}: {exc}"
            return
        log.warning("scoring %d images together failed (%s); scoring them one by one", len(chunk),
                    type(exc).__name__)
        for item in chunk:
            _score_chunk(bundle, [item], batch_size, probs, errors, feats)


def _probabilities(learn, images: list, batch_size: int) -> np.ndarray:
    # Items are already PILImages, so test_dl starts its pipeline after the path reader.
    dl = learn.dls.test_dl(images, bs=batch_size, num_workers=0)
    with learn.no_bar(), learn.no_logging():
        batch_probs, _ = learn.get_preds(dl=dl)
    return batch_probs.float().numpy()


def mirrored_probabilities(learn, paths: list, batch_size: int) -> np.ndarray:
    """The mirror images' probabilities, decoded `batch_size` at a time: training's test-time-flip
    half for its validation images (the plain half comes from its own loader)."""
    from fastai.vision.core import PILImage
    parts = [_probabilities(learn, [_mirror(PILImage.create(p)) for p in paths[i:i + batch_size]], batch_size)
             for i in range(0, len(paths), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, len(learn.dls.vocab)), dtype=np.float32)


def _mirror(image):
    from fastai.vision.core import PILImage
    from PIL import Image
    return PILImage.create(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))


def score_paths(bundle: Bundle, paths: list, batch_size: int = 64) -> np.ndarray:
    """Probabilities (N, len(vocab)) in `bundle.vocab` order; NaN rows for images that failed."""
    return score_with_errors(bundle, paths, batch_size)[0]


def predict_paths(bundle: Bundle, paths: list, batch_size: int = 64, max_pixels: int = MAX_PIXELS,
                  rules: TrainedOn | None = None) -> list[Prediction]:
    """One Prediction per path. With `rules` (`mlc predict`: the curation its model's images went
    through), what curation would refuse is an error row and what it would call odd a note."""
    notes: dict[int, str] = {}
    probs, errors = score_with_errors(bundle, paths, batch_size, max_pixels, rules=rules, notes=notes)
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
        out.append(Prediction(path=str(path), labels=labels, none_of=not labels, probs=row, note=notes.get(i)))
    progress.summary(f"predict: {bundle.path.name}", [
        ("images", len(out)), ("with a class", sum(bool(p.labels) for p in out)),
        ("none of the classes", sum(p.none_of and not p.error for p in out)), ("failed", len(errors))])
    return out
