"""A run's rounds as records: one `RoundRecord` per mining round (round 0 trains before any mining),
made from a model's metrics.json by `record`. The pipeline makes them (pipeline.run_stages), shipping
judges them (which model ships), the reports print them (report/rounds.py: the one rounds table), so
they sit below all three.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RoundRecord:
    round: int
    dataset_version: str
    bundle: str
    macro_f1: float
    unknown_accepted: float | None
    probe_accepted: float | None
    negatives_added: int = 0
    valid_macro_f1: float | None = None     # at the model's own thresholds, without mined negatives (`held_out_f1`)


def shared_valid_f1(metrics: dict) -> float | None:
    """A model's validation macro F1 on the images every round shares: a round's mined negatives
    join its validation split (mine.calibration_share), so rounds compare without them. Models
    trained before that setting have only the whole split's figure."""
    valid = metrics.get("valid") or {}
    return valid.get("macro_f1_without_mined", valid.get("macro_f1"))


def record(round_no: int, version: str, bundle: str, metrics: dict, added: int = 0) -> RoundRecord:
    """One mining round's line of the report, from a model's metrics."""
    test = metrics["test"]
    return RoundRecord(round_no, version, bundle, test["macro_f1"], test.get("unknown_accepted"),
                       test.get("probe_accepted"), added, shared_valid_f1(metrics))


def mining_counts(round_no: int, mined: dict) -> dict:
    """What a mining round did with the pool, in numbers (a mine result as `Stages.mine` returns one:
    its held images listed; counts a result lacks are left out): kept in the run's result, so that
    `mlc run` can say how many it held for review beside how many it added."""
    counts = {"round": round_no, "added": mined.get("added", 0), "held": len(mined.get("held") or [])}
    counts.update({k: mined[k] for k in ("scored", "accepted", "over_cap", "decided_in_review") if k in mined})
    return counts
