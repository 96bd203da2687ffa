"""Where everything lives under a data root. Every path the stages read or write is named here, so
a data root's layout is readable in one place (docs/reliability.md describes what each holds)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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

    def dataset_version(self, dataset: str, version: str) -> Path:
        """A version of any dataset under this root (a model's bundle names the one it trained on)."""
        return self.root / "datasets" / dataset / version

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def reports(self) -> Path:
        return self.root / "reports"
