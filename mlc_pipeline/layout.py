"""Where everything lives under a data root. Every path the stages read or write is named here, so
a data root's layout is readable in one place (docs/reliability.md describes what each holds)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
