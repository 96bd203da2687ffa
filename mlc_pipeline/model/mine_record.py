"""What a mining round leaves behind, beside mine.py: its number, its record, and the warning about
pool queries that overlap a class.

Rounds are numbered across runs and commands by the catalog (`next_round`): a later `mlc run` or
`mlc mine` starts a new round instead of mining "round 1" again, so each round keeps its own cap and
its undo (a user's audit: three runs put three caps' worth of negatives under round 1, and each
rewrote the bundle's mined-r1.csv with only its own decisions, so the report said "0 hard negatives
added" while the catalog trained on 56). A round mined again by number (`mlc mine --round N`) adds
to its record (`record_round`) and to its cap's count, never replacing either. A bundle's mined.csv
from before the per-round records is kept as its round's record before a new round replaces it
(`keep_legacy_record`)."""

from __future__ import annotations

import csv
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Iterable

from mlc_pipeline.catalog import SQL_INT_MAX, Catalog, catalog_exists
from mlc_pipeline.config import Config, ConfigError
from mlc_pipeline.fsutil import atomic_path, write_csv_atomic

log = logging.getLogger(__name__)


def next_round(cfg: Config) -> int:
    """One more than the highest round the catalog records (mined, held, or put back), or 1."""
    if not catalog_exists(cfg.catalog_path):
        return 1
    with Catalog(cfg.catalog_path, readonly=True) as catalog:
        return catalog.last_mined_round() + 1


def check_round(round_no: int | None, undo: bool = False) -> None:
    """Refuse (ConfigError) a round number other than 1..SQL_INT_MAX (None: none given, the default
    round), before anything is scored or changed: round 0 is a run's model before any mining (`default-v5-r0-...`, "0 (shipped)"), a
    negative one is a round no reader counts (`last_mined_round` reads digits), and one past SQL's
    integers crashed in the commit, after the whole pool was scored (the mining26 audit)."""
    if round_no is not None and not 1 <= round_no <= SQL_INT_MAX:
        shown = str(round_no) if len(str(round_no)) <= 24 else f"{str(round_no)[:20]}..."
        raise ConfigError(f"mine{' --undo' if undo else ''} --round: a mining round is a whole number from 1 to "
                          f"{SQL_INT_MAX}, not {shown} (round 0 is a run's first model, before any mining); "
                          f"nothing was {'put back' if undo else 'mined'}")


def record_round(folder: Path, round_no: int, decisions: list[dict], columns: list[str], run_id: str) -> Path:
    """Round N's record as it will be once the catalog commits it: every decision of round N by this
    bundle, an earlier call's kept (an image decided again takes its new decision), written to a
    hidden pending file named for the mining run (`.mined-r<N>.csv.<run>.pending`, which no reader
    reads). Written before the catalog's moves, so that one stopped after them can still be recorded;
    `publish_record` makes it `mined-r<N>.csv` (and `mined.csv`) once they are committed, and
    `settle_record` publishes or removes one a stopped round left. Returns the pending file."""
    path = folder / f"mined-r{round_no}.csv"
    now = {str(d["candidate_id"]) for d in decisions}
    earlier = []
    if path.is_file():
        with open(path, newline="") as f:
            earlier = [r for r in csv.DictReader(f) if r.get("candidate_id") not in now]
    pending = folder / f".{path.name}.{run_id}.pending"
    write_csv_atomic(pending, earlier + decisions, columns)
    return pending


PENDING = re.compile(r"\.mined-r(?P<round>\d+)\.csv\.(?P<run>[^.]+)\.pending")


def publish_record(pending: Path) -> None:
    """After the commit: the pending record becomes `mined-r<N>.csv`, and `mined.csv` (the bundle's
    latest round) a copy of it. A pending record gone already was settled by another process (a
    reader, `settle_stopped`): nothing left to do."""
    found = PENDING.fullmatch(pending.name)
    final = pending.with_name(f"mined-r{found['round']}.csv")
    try:
        os.replace(pending, final)
    except FileNotFoundError:
        return
    with atomic_path(pending.with_name("mined.csv")) as tmp:
        shutil.copyfile(final, tmp)


ROUND_RECORD = re.compile(r"mined-r\d+\.csv")       # report/analysis.py reads these, one per round
LEGACY_RECORD = "mined-legacy.csv"                  # a legacy mined.csv whose round nobody can tell


def keep_legacy_record(catalog: Catalog, folder: Path) -> Path | None:
    """A bundle mined before the per-round records (2026-12-06) holds its round's decisions (every added,
    held and over-cap image, with score and likeness) in mined.csv alone, which the next round's
    `publish_record` replaces (the upgrade29 audit: round 1's record gone). Kept first, atomically, as
    mined-r<its round>.csv (`legacy_round`), where the report and review read it, or, where the catalog
    cannot tell its round, as mined-legacy.csv, said in a warning. Nothing once the bundle has a
    per-round record. Returns the file kept, or None."""
    legacy = folder / "mined.csv"
    if not legacy.is_file() or any(ROUND_RECORD.fullmatch(p.name) for p in folder.glob("mined-r*.csv")):
        return None
    round_no = legacy_round(catalog, legacy)
    kept = folder / (f"mined-r{round_no}.csv" if round_no else LEGACY_RECORD)
    with atomic_path(kept) as tmp:
        shutil.copyfile(legacy, tmp)
    if round_no:
        log.info("%s: mined.csv, written before per-round records, kept as %s", folder.name, kept.name)
    else:
        log.warning("%s: mined.csv, written before per-round records, kept as %s: the catalog does not tell "
                    "which round it records (none of its added or held images has one round's mining event), "
                    "so the report does not show it", folder.name, kept.name)
    return kept


def legacy_round(catalog: Catalog, record: Path) -> int | None:
    """The round a record without a number recorded: the one round in which the catalog's events show
    every image it added (`hard-negative:round=N`) or held (`<its decision>:round=N`) decided so.
    Events, not `mined_round`: an undo clears that, never the events. An image with no such event
    (taken down since) tells nothing; None when no image tells, or they tell different rounds."""
    with open(record, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("decision") == "added" or
                (r.get("decision") or "").startswith("held:")]
    common: set[int] | None = None
    for r in rows:
        mark = "hard-negative" if r["decision"] == "added" else r["decision"]
        rounds = {int(m[1]) for e in catalog.events(int(r["candidate_id"])) if e["stage"] == "mine"
                  and (m := re.fullmatch(re.escape(mark) + r":round=(\d+)", e["reason"] or ""))}
        if rounds:
            common = rounds if common is None else common & rounds
    return next(iter(common)) if common and len(common) == 1 else None


def settle_record(catalog: Catalog, pending: Path) -> None:
    """A pending record a stopped round left (an error, Ctrl-C or kill after it was written):
    published when the catalog committed that round's moves (one of its added or held images has an
    event of its run: the transaction is all or nothing), else removed, so that no record lists
    decisions the catalog never applied (the mining26 audit: a round that failed in its commit left
    103 "added" negatives in mined.csv, and the report called them undone). Nothing without the file."""
    found = PENDING.fullmatch(pending.name)
    if found is None:
        return
    try:
        with open(pending, newline="") as f:
            moved = [int(r["candidate_id"]) for r in csv.DictReader(f)
                     if r.get("decision") == "added" or (r.get("decision") or "").startswith("held:")]
    except FileNotFoundError:       # settled meanwhile by another process: the same answer, given once
        return
    if any(e["run_id"] == found["run"] for cid in moved for e in catalog.events(cid)):
        keep_legacy_record(catalog, pending.parent)     # before publishing replaces mined.csv
        publish_record(pending)
        log.info("%s: round %s's record published (its moves are in the catalog)", pending.parent.name, found["round"])
    else:
        pending.unlink(missing_ok=True)
        log.info("%s: round %s's record removed (the catalog never committed its moves)", pending.parent.name,
                 found["round"])


PENDING_FILES = ".mined-r*.csv.*.pending"


def settle_records(catalog: Catalog, folder: Path) -> None:
    """`settle_record` for every pending record in a bundle: before a round mines with it (under the
    data root's write lock, so no other mining is writing one). A legacy mined.csv is kept first
    (`keep_legacy_record`): the round about to mine replaces it."""
    keep_legacy_record(catalog, folder)
    for pending in sorted(folder.glob(PENDING_FILES)):
        settle_record(catalog, pending)


def settle_stopped(catalog: Catalog, folders: Iterable[Path]) -> None:
    """What every reader of mining records does first (the report's mining rounds, `mlc inspect
    --html`, the review app's mined.csv, `mlc mine --undo`): `settle_record` each pending record in
    these bundles whose mining run is over (ended, or its process known gone: killed with -9 between
    the record and its publishing), so that a reader never shows a round the catalog never committed
    nor misses one it did, without waiting for the bundle's next mining (the mining26 leftovers). A
    run still mining is left alone: it publishes its own record once it commits (a reader never
    reads a pending one). Idempotent: two readers settling one record give the same answer once."""
    for folder in folders:
        for pending in sorted(Path(folder).glob(PENDING_FILES)):
            found = PENDING.fullmatch(pending.name)
            run = catalog.run(found["run"]) if found else None
            if found and (run is None or run["status"] != "running"):
                try:
                    settle_record(catalog, pending)
                except OSError as exc:      # a read-only models folder, say: the reader reads on
                    log.warning("%s: a stopped round's record %s could not be settled (%s): shown as the "
                                "published records say, until a mining with it settles it", folder, pending.name, exc)


def bundle_folders(models: Path) -> list[Path]:
    "The folders under a models folder: the bundles a mining round may have written a record into."
    return [p for p in models.iterdir() if p.is_dir()] if models.is_dir() else []


def settle_in(catalog_path, folders: Iterable[Path]) -> None:
    """`settle_stopped` for a reader with no catalog open: the catalog opened (read-only) only when one
    of the bundles holds a pending record."""
    folders = [f for f in folders if next(Path(f).glob(PENDING_FILES), None) is not None]
    if folders and catalog_exists(catalog_path):
        with Catalog(catalog_path, readonly=True) as catalog:
            settle_stopped(catalog, folders)


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    write_csv_atomic(path, rows, columns)


# Words that say nothing about what a photo shows: "the beach" shares nothing with "the kite".
FILLER_WORDS = frozenset({"the", "and", "for", "with", "from", "into", "onto", "over", "under", "near", "its",
                          "their", "this", "that", "are", "was", "not", "off", "out", "all", "any", "some"})


def overlapping_queries(cfg: Config) -> dict[str, dict[str, list[str]]]:
    """Pool query -> class -> the words they share. A pool query that shares a word with a class (its
    name or a query) may return members of that class; mined as negatives they would teach the model
    to reject its own class. Words are compared as search matches them: punctuation splits them, case
    and a plural ending do not count."""
    def words(text: str) -> set[str]:
        return {w for w in re.findall(r"[^\W_]+", text.lower()) if len(w) > 2 and w not in FILLER_WORDS}

    out: dict[str, dict[str, list[str]]] = {}
    for query in (cfg.mine.pool.queries if cfg.mine.pool else []):
        for name, qs in cfg.classes.items():
            class_words = words(name).union(*(words(q) for q in qs.queries))
            shared = {word for a in words(query) for b in class_words if (word := shared_word(a, b))}
            if shared:
                out.setdefault(query, {})[name] = sorted(shared)
    return out


def pool_overlaps(cfg: Config) -> list[str]:
    """The warning for each pool query that overlaps a class (`overlapping_queries`)."""
    return [f"mine.pool query {query!r} shares {shared} with class {name!r}: it may return {name} images, "
            f"which mining would turn into negatives (the images it finds that the model takes for {name} are "
            f"held for review, not mined)"
            for query, classes in overlapping_queries(cfg).items() for name, shared in classes.items()]


def word_forms(word: str) -> set[str]:
    """The word and what it is with a plural 's' or 'es' taken off: 'buses' is read as buses, buse or
    bus, so that it meets 'bus', as 'kites' meets 'kite', 'glasses' 'glass' and 'tomatoes' 'tomato'
    (a single folding rule made 'buses' 'buse' and 'lens' 'len', and they never met: the unit-tests
    helper's finding). Flickr's free text finds plurals; the bundled server folds an 's'."""
    forms = {word}
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        forms.add(word[:-1])
    if word.endswith("es") and word[:-2].endswith(("s", "x", "z", "ch", "sh", "o")):    # English's -es plurals
        forms.add(word[:-2])            # ('kites' is not 'kit' + es)
    return forms


def shared_word(a: str, b: str) -> str | None:
    """The word two words share as search reads them (`word_forms`), as one of them writes it when it
    can ('kite' for kites and kite; 'lens' for lens and lenses), else the longest common form; None
    when they do not meet."""
    common = word_forms(a) & word_forms(b)
    if not common:
        return None
    written = common & {a, b}
    return min(written, key=len) if written else max(common, key=len)
