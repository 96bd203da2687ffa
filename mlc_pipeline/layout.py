"""Where everything lives under a data root. Every path the stages read or write is named here, so
a data root's layout is readable in one place (docs/reliability.md describes what each holds).
The pointer models/LATEST is read and written here (`latest_name`, `point_latest`): below both the
model registry (model/registry.py, model/bundle.py) and the store's (storemodels.py), which import
neither each other's module nor numpy for it."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from mlc_pipeline.fsutil import write_text_atomic

MODEL_POINTER = "LATEST"    # models/LATEST: a text file naming the product model's bundle folder
MODEL_LISTINGS = ".listings"     # models/.listings/<bundle>/: a store bundle's bundle.json alone (storemodels)
VERSION_LISTINGS = ".listings"   # datasets/<name>/.listings/vN/: a store version's manifest alone (storeversions)


def photo_shard(photo_id: str) -> str:
    """The raw/ subfolder a photo's file goes in: its id's last two characters (collect writes there,
    takedowns look there)."""
    return photo_id[-2:].rjust(2, "_")


@dataclass(frozen=True)
class DataLayout:
    root: Path
    dataset_name: str = "default"

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.sqlite"

    def raw(self, source: str | None = None) -> Path:
        """Downloaded files, one folder per source (sharded by photo id inside)."""
        return self.root / "raw" / source if source else self.root / "raw"

    def quarantine(self, reason: str | None = None) -> Path:
        """Files curation rejected, one folder per reason (the part before any ':')."""
        return self.root / "quarantine" / reason.split(":")[0] if reason else self.root / "quarantine"

    def quarantine_destination(self, reason: str, path: Path) -> Path:
        """Where a rejected file goes: its place under raw/ kept below the reason's folder
        (quarantine/too-small/flickr/45/12345.jpg), since photo ids repeat across sources and a bare
        name would let one source's file replace another's."""
        path = Path(os.path.abspath(path))
        for top, skip in ((self.raw(), 0), (self.quarantine(), 1)):     # quarantined before: drop its reason
            try:
                below = path.relative_to(os.path.abspath(top)).parts[skip:]
            except ValueError:
                continue
            if below:
                return self.quarantine(reason).joinpath(*below)
        return self.quarantine(reason) / path.name

    def quarantined(self, name: str) -> list[Path]:
        """Every quarantined file with this name, under any reason (and either layout: the bare name
        of data roots quarantined before 2026-12-05, or the path under raw/)."""
        return sorted(self.quarantine().rglob(name)) if self.quarantine().is_dir() else []

    def photo_files(self, source: str, photo_id: str) -> list[Path]:
        """A photo's files: raw/<source>/<shard>/<photo_id>.* and the same under any quarantine reason
        (where collect writes it, and where curate sets a file aside, damaged or rejected). No other
        photo's file is ever there; a file of the bare-name quarantine layout (before 2026-12-05) is not
        looked for."""
        name, shard = f"{glob.escape(photo_id)}.*", photo_shard(photo_id)
        folders = []
        if self.quarantine().is_dir():
            folders += [reason / source / shard for reason in sorted(self.quarantine().iterdir()) if reason.is_dir()]
        return self.raw_files(source, photo_id) + [p for folder in folders if folder.is_dir()
                                                   for p in sorted(folder.glob(name)) if p.is_file()]

    def raw_files(self, source: str, photo_id: str) -> list[Path]:
        "A photo's files at its place under raw/<source>/: raw/<source>/<shard>/<photo_id>.*, sorted."
        shard = self.raw(source) / photo_shard(photo_id)
        return sorted(p for p in shard.glob(f"{glob.escape(photo_id)}.*") if p.is_file())

    def is_photo_file(self, path: str | os.PathLike, source: str, photo_id: str) -> bool:
        """Whether `path` is one of the places `photo_files` looks in for this photo."""
        try:
            parts = Path(os.path.abspath(path)).relative_to(os.path.abspath(self.root)).parts
        except ValueError:
            return False
        place = (parts[1:3] if parts[:1] == ("raw",) and len(parts) == 4 else
                 parts[2:4] if parts[:1] == ("quarantine",) and len(parts) == 5 else None)
        return place == (source, photo_shard(photo_id)) and parts[-1].startswith(f"{photo_id}.")

    @property
    def thumbnails(self) -> Path:
        """The review app's thumbnail cache, by content: thumbs/<sha[:2]>/<sha256>-<side>.jpg."""
        return self.root / "review" / "thumbs"

    def thumbnails_of(self, sha256: str) -> list[Path]:
        return sorted((self.thumbnails / sha256[:2]).glob(f"{sha256}-*.jpg")) if sha256 else []

    @property
    def legacy_downloads(self) -> Path:
        return self.root / "tmp" / "downloads"      # where versions before 2026-12 wrote partial downloads

    @property
    def datasets(self) -> Path:
        """This dataset's published versions: v1, v2, ... and the `latest` link."""
        return self.root / "datasets" / self.dataset_name

    def version(self, name: str) -> Path:
        return self.dataset_version(self.dataset_name, name)

    def version_listing(self, name: str) -> Path:
        """A version's manifest.csv and dataset.json alone, in a cache of an object-store data root that
        does not hold the version: what `mlc inspect` counts the next version's changes against, what
        `mlc build` keeps splits by, what `mlc remove` reads the models' learning from."""
        return self.datasets / VERSION_LISTINGS / name

    def dataset_version(self, dataset: str, version: str) -> Path:
        """A version of any dataset under this root (a model's bundle names the one it trained on)."""
        return self.root / "datasets" / dataset / version

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def reports(self) -> Path:
        return self.root / "reports"


def latest_name(models_dir: Path) -> str | None:
    """The bundle models/LATEST names (a link to a bundle's folder, made by hand: its folder's name), or
    None: no pointer, an empty one, no models folder (nor data root) yet. Its one reader."""
    pointer = models_dir / MODEL_POINTER
    if pointer.is_dir():
        return pointer.resolve().name
    try:
        return pointer.read_text().strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None


def point_latest(models_dir: Path, name: str) -> None:
    """Point models/LATEST at the bundle `name` (atomic: readers see the old or the new name). The
    one writer of the pointer; its callers check the bundle as they need (registry.promote)."""
    write_text_atomic(Path(models_dir) / MODEL_POINTER, name + "\n")
