"""The sets a collect fills (every class, "other", probe and the mining pool), how many usable
images each still lacks, and, for the sets that fall short, the line that says why."""

from __future__ import annotations

import json
from dataclasses import dataclass

from mlc_pipeline.catalog import Catalog
from mlc_pipeline.config import Config
from mlc_pipeline.collect.flickr import Target


def targets(cfg: Config) -> list[tuple[Target, list[str], int]]:
    """Every set to collect: (target, queries, count). Classes first, so a photo found by a class
    query and an "other" query ends up a class image."""
    out = [(Target("train", name), qs.queries, qs.count) for name, qs in cfg.classes.items()]
    out.append((Target("train", "other"), cfg.other.queries, cfg.other.count))
    if cfg.probe:
        out.append((Target("probe", "other"), cfg.probe.queries, cfg.probe.count))
    if cfg.mine.pool:
        out.append((Target("pool", "other"), cfg.mine.pool.queries, cfg.mine.pool.count))
    return out


def set_key(target: Target) -> str:
    return f"{target.purpose}/{target.label}"


def set_name(target: Target) -> str:
    """How reports name a set: the class, 'other', 'probe' or 'mine pool'."""
    return {"probe": "probe", "pool": "mine pool"}.get(target.purpose, target.label)


MIN_USABLE_RATE = 0.2     # at most 5 downloads per missing usable image a round (a small first sample can look worse)


def usable_rate(tally: dict) -> float:
    """The share of a set's curated downloads that curation accepted (1.0 before any curation)."""
    curated = tally["accepted"] + sum(tally["rejected"].values()) + sum(tally["duplicate"].values())
    return max(MIN_USABLE_RATE, tally["accepted"] / curated) if curated else 1.0


def usable_needed(tally: dict, count: int) -> float:
    """Usable images a set still lacks: downloads not curated yet count at the set's usable rate."""
    return round(count - tally["accepted"] - tally["downloaded"] * usable_rate(tally), 6)


@dataclass
class Shortfall:
    """A set with fewer usable images than its count, and where the others went."""

    set: str                  # as reports name it: a class, 'other', 'probe' or 'mine pool'
    key: str                  # purpose/label
    usable: int
    count: int
    why: str
    rejected: dict[str, int]  # curation's reasons
    duplicates: int
    failed: dict[str, int]    # downloads that failed or were skipped, by reason
    awaiting: int             # downloaded, not curated yet

    def line(self) -> str:
        parts = [self.why]
        if self.rejected:
            parts.append(f"{sum(self.rejected.values())} rejected: " + ", ".join(
                f"{reason} {n}" for reason, n in sorted(self.rejected.items(), key=lambda x: (-x[1], x[0]))))
        if self.duplicates:
            parts.append(f"{self.duplicates} duplicates removed")
        if self.failed:
            parts.append(f"{sum(self.failed.values())} not downloaded: " + ", ".join(
                f"{reason} {n}" for reason, n in sorted(self.failed.items(), key=lambda x: (-x[1], x[0]))))
        return f"{self.set}: {self.usable} of {self.count} usable ({'; '.join(parts)})"


def shortfalls(cfg: Config, catalog: Catalog, exhausted: list[str] | set[str] = (),
               unfinished: str = "not topped up yet: run `mlc collect` and `mlc curate` again, or `mlc run`"
               ) -> list[Shortfall]:
    """Every set with fewer accepted images than its count. `exhausted`: the sets whose queries ran
    dry; `unfinished` says why the others are short."""
    out = []
    for target, _, count in targets(cfg):
        tally = catalog.set_tally(target.purpose, target.label, cfg.source.licenses)
        if tally["accepted"] >= count:
            continue
        key = set_key(target)
        if key in exhausted and not tally["pending"]:
            why = "queries exhausted" + (f"; {tally['downloaded']} downloads not curated yet: run `mlc curate`"
                                         if tally["downloaded"] else "")
        elif tally["downloaded"]:
            why = f"{tally['downloaded']} downloads not curated yet: run `mlc curate`"
        else:
            why = unfinished
        failed = dict(tally["failed"])
        for reason, n in tally["skipped"].items():
            failed[reason] = failed.get(reason, 0) + n
        out.append(Shortfall(set_name(target), key, tally["accepted"], count, why, dict(tally["rejected"]),
                             sum(tally["duplicate"].values()), failed, tally["downloaded"]))
    return out


def last_exhausted(catalog: Catalog) -> list[str]:
    """The sets whose queries ran dry in the latest completed collect run."""
    for run in catalog.runs(100):
        if run["command"] == "collect" and run["status"] == "completed":
            return list(json.loads(run["summary"] or "{}").get("exhausted", []))
    return []
