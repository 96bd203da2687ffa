"""What a copy made now of a published version leaves out since a takedown (`mlc remove`): an export
(`mlc export -c`), the HTML report of a version (`mlc inspect --html --version`) and a training on it
(`mlc train --version`, model/stage.py; and whether a model trained before may stay shipped,
model/learned.py) ask the catalog here. A published version is immutable, so it can still hold a photo taken down since, or a copy the
takedown holds as the same picture (a re-encode, a mirror, the image kept in place of the photo:
`catalog.overrides.hold`, counted `held-for-takedown`); a copy made now must carry neither."""

from __future__ import annotations

from dataclasses import dataclass

from mlc_pipeline.catalog import Catalog, catalog_exists
from mlc_pipeline.config import Config


@dataclass(frozen=True)
class Takedowns:
    removed: frozenset[tuple[str, str]]     # (source, photo_id) of the photos taken down (status removed)
    held: frozenset[tuple[str, str]]        # of the copies a takedown's hold keeps out now (not removed)

    def __contains__(self, photo: object) -> bool:
        return photo in self.removed or photo in self.held

    def __bool__(self) -> bool:
        return bool(self.removed or self.held)

    def left_out_of(self, rows: list[dict]) -> tuple[list[dict], list[dict]]:
        """(the rows kept, the rows left out) of a version's manifest rows: a photo taken down, or a
        copy held for a takedown, is left out of whatever is made of the version now."""
        gone = [r for r in rows if (r.get("source"), r.get("photo_id")) in self]
        return [r for r in rows if (r.get("source"), r.get("photo_id")) not in self], gone

    def held_names(self, rows: list[dict]) -> list[str]:
        "`photo_name` of the rows a takedown holds (not removed)."
        return [photo_name(r) for r in rows if (r.get("source"), r.get("photo_id")) in self.held]


def photo_name(row: dict) -> str:
    "A manifest row's photo as takedowns name it: 'source:photo_id'."
    return f"{row['source']}:{row['photo_id']}"


def takedowns_of(catalog: Catalog) -> Takedowns:
    """The photos taken down and the copies held for them, as the catalog says now: a hold a user
    undid (another picture, they said) is not one."""
    removed = frozenset(catalog.taken_down_photos())
    held = (catalog.get(cid) for cid in sorted(catalog.takedown_held()))      # a few: the copies of a few photos
    return Takedowns(removed, frozenset((r["source"], r["photo_id"]) for r in held if r) - removed)


def read_takedowns(cfg: Config) -> Takedowns | None:
    """`takedowns_of` the config's catalog; None when the data root has no catalog to ask (an export of
    a version folder alone cannot be checked)."""
    if not catalog_exists(cfg.catalog_path):
        return None
    with Catalog(cfg.catalog_path, readonly=True) as catalog:
        return takedowns_of(catalog)


def held_words(held: list) -> str:
    "How a note names the copies held among the photos it says are left out ('' when none)."
    return f", or held as copies of them ({len(held)})" if held else ""
