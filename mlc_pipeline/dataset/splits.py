"""Which split each image of a new version goes in (docs/curation.md, "Splits: a picture keeps the
split it was published in").

An image never published is split by its photo id (`split_of`; a mined negative or a pool image
labelled in review by `mined_split`, never test; a probe is "probe"). Then (`settle_splits`):

- a picture already published keeps its split, whichever copy of it the version holds: a kept image
  takes the split its own photo, or a copy curate dropped for it (`duplicate_of`), was published in.
  So a better copy of a training photo collected later (a lossless file, more pixels) replaces it in
  train, where by its own photo id it could land in test: a picture the previous version trained on
  (audit curation29, finding 4);
- the images of a review pair (`review:label-conflict:with=<id>`: a near copy under other labels,
  both kept until a person decides) share one split, so one picture is never trained on under one
  label and tested under the other (finding 3): the split of the pair's first published member, or,
  none published, of its first photo (by source, then photo id);
- a copy put back in review ("not a duplicate", "restore") goes with the image curate kept in its
  place, its twin (catalog.putback), in the twin's split, the one the twin was published in even
  when the twin is out: whether the person was right or not, no picture is in train and test at once,
  and the next curate finds no test copy to drop the twin for (audit review29, finding 1).

A group's split is one its members may all keep: when the first published split is test and a member
can never be tested (a mined image put back as "not a duplicate" of a twin published in test), that
member is left out of the version (`_left_out`: "copy-of-a-test-picture"); otherwise a split all may
keep, the published one first, then the first member's own (review29 finding 7: the group stayed
split, the twin in test and its copy in train). A test publication counts through every member, also
one that can never take test: a copy put back whose twin is out of the version (rejected in review)
carries the twin's test split alone, and it trained (note-stop62).

Of several published splits, test comes first (a picture once tested never trains: the rule curate
keeps for copies of test images), then the earliest version. A published split is kept only where
the image could get it now: not a split `build.split` gives no share, not valid for a mined image
when `mine.calibration_share` is 0; a mined image whose picture was published in test is left out
(above), unless `build.split` gives test no share; otherwise its own split.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from collections import defaultdict
from pathlib import Path

from mlc_pipeline.catalog.pairs import review_partner
from mlc_pipeline.manifest import SPLITS, versions

log = logging.getLogger(__name__)


def split_of(source: str, photo_id: str, fractions: dict[str, float]) -> str:
    """By photo id alone (a hash, the same in every process): the split of an image never published."""
    h = int.from_bytes(hashlib.sha256(f"{source}:{photo_id}".encode()).digest()[:8], "big") / 2 ** 64
    total = sum(fractions.get(s, 0) for s in SPLITS)
    edge = 0.0
    for s in SPLITS:
        edge += fractions.get(s, 0) / total
        if h < edge:
            return s
    return SPLITS[-1]


def mined_split(source: str, photo_id: str, calibration_share: float) -> str:
    """A mined negative trains, except a stable share that joins validation: the cap on unknowns is
    calibrated there, so it then sees images like the pool's and not only the "other" set's
    (docs/training.md, "Mining"). Test and probe stay fixed, so rounds compare on the same images."""
    if calibration_share <= 0:
        return "train"
    return split_of(source, photo_id, {"train": 1 - calibration_share, "valid": calibration_share})


def own_split(c: dict, fractions: dict[str, float], calibration_share: float) -> tuple[str, tuple[str, ...]]:
    """(the split of a build candidate by its photo id, the splits it may keep from a publication)."""
    if c["mined_round"] is not None or c["from_pool"]:     # mined, or a pool image labelled in review
        return (mined_split(c["source"], c["photo_id"], calibration_share),
                ("train", "valid") if calibration_share > 0 else ("train",))
    if c["purpose"] == "probe":
        return "probe", ()
    return split_of(c["source"], c["photo_id"], fractions), tuple(s for s in SPLITS if fractions.get(s, 0) > 0)


# root -> (the manifests read, as (path, size, mtime), and what they gave): a published version never
# changes, so a later build in the same process (a mining round's) reads only the versions new since.
_read: dict[Path, tuple[list[tuple[str, int, int]], dict]] = {}


def published_splits(root: Path, listings: Path | None = None) -> dict[tuple[str, str], dict[str, int]]:
    """(source, photo_id) -> {split: the first version number that published the photo in it}, over
    the versions in `root` (train, valid and test: a probe keeps no split), and the versions whose
    manifest alone is in `listings` (a cache of an object-store root: storeversions.pull_listings). A
    manifest that cannot be read is passed over, with a warning: its photos are split as if it had not
    published them. Three columns are read, row by row; the result is kept for this process."""
    found = {v: listings / v / "manifest.csv" for v in (versions(listings) if listings and listings.is_dir() else [])}
    found.update({v: root / v / "manifest.csv" for v in versions(root)})    # a version held whole: its own
    seen = []
    for version in sorted(found, key=lambda v: int(v[1:])):
        try:
            st = found[version].stat()
        except OSError:
            continue
        seen.append((str(found[version]), st.st_size, st.st_mtime_ns))
    done, first = _read.get(root, ([], None))
    if first is None or seen[:len(done)] != done:
        done, first = [], defaultdict(dict)
    for path, _, _ in seen[len(done):]:
        version = int(Path(path).parent.name[1:])
        try:
            for photo, split in manifest_splits(Path(path)):
                if split in SPLITS:
                    first[photo].setdefault(split, version)
        except (OSError, ValueError, IndexError, csv.Error) as exc:
            log.warning("%s cannot be read to its end (%s): its images after the rows read keep no split in "
                        "this build", path, exc)
    _read[root] = (seen, first)
    return first


def manifest_splits(path: Path):
    """((source, photo_id), split) of each row of a manifest, streamed: no row is kept whole."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        if not {"source", "photo_id", "split"} <= set(header):
            raise ValueError(f"no source, photo_id and split columns in {header[:5]}")
        at = [header.index(name) for name in ("source", "photo_id", "split")]
        splits = {s: s for s in SPLITS}
        for cells in reader:
            source, photo_id, split = (cells[i] for i in at)
            yield (source, photo_id), splits.get(split, split)


def settle_splits(rows: list[dict], published: dict[tuple[str, str], dict[str, int]],
                  dropped_for: dict[int, list[tuple[str, str]]], put_back: list[tuple[int, int]] = (),
                  left_out: list[dict] | None = None) -> int:
    """Give each row (its `split` by its photo id, `_splits` the splits it may keep, `_reason` curate's
    note) the split its picture was published in, and each review pair one split (the module doc).
    `dropped_for`: candidate id -> the photos (source, photo_id) whose published splits pass to it: the
    copies curate dropped for it, and a put-back copy's twin. `put_back`: (a copy put back in review, its
    twin) (catalog.putback): the two share a split, the twin's. A member of a group that cannot go in
    the group's split (a pool image, never tested, with a twin published in test) is taken out of
    `rows` and added to `left_out` (`_left_out` says why): a group is never split. Returns how many
    rows left the split of their own photo id."""
    moved, copies, out = 0, {copy for copy, _ in put_back}, []
    testing = any("test" in r["_splits"] for r in rows)    # build.split gives test a share
    for group in review_groups(rows, put_back):
        allowed = set.intersection(*(set(r["_splits"]) for r in group))
        if not allowed:         # a probe among them: it stays a probe (no split a picture keeps)
            continue
        group.sort(key=lambda r: (r["candidate_id"] in copies, r["source"], r["photo_id"]))    # the first first
        # A published test split counts whoever it passes through: a copy put back whose twin is out (rejected
        # in review) carries the twin's, and mined, it may never take it, so it must leave (not train).
        records = sorted((split != "test", version, split) for r in group
                         for photo in [(r["source"], r["photo_id"]), *dropped_for.get(r["candidate_id"], ())]
                         for split, version in published.get(photo, {}).items()
                         if split in r["_splits"] or split == "test" and testing)
        if records and records[0][2] == "test" and "test" not in allowed:
            chosen = "test"     # a picture once tested never trains: who can never be tested leaves
            gone = [r for r in group if chosen not in r["_splits"]]
            for r in gone:
                r["_left_out"] = "copy-of-a-test-picture"
            out += gone
            group = [r for r in group if chosen in r["_splits"]]
        else:
            chosen = next((s for _, _, s in records if s in allowed), None) or next(
                (r["split"] for r in group if r["split"] in allowed), None) or next(s for s in SPLITS if s in allowed)
        for r in group:
            moved += r["split"] != chosen
            r["split"] = chosen
    if out:
        rows[:] = [r for r in rows if "_left_out" not in r]
        if left_out is not None:
            left_out += out
    return moved


def review_groups(rows: list[dict], put_back: list[tuple[int, int]] = ()) -> list[list[dict]]:
    """The rows as groups that share a split: the images of each review pair (or chain of pairs), and
    each copy put back in review with its twin, together; every other row alone. A pair's note names
    the other image (either note will do: an image in two pairs keeps one note, and the other image's
    names it)."""
    by_id = {r["candidate_id"]: r for r in rows}
    parent = {cid: cid for cid in by_id}

    def root(cid: int) -> int:
        while parent[cid] != cid:
            parent[cid] = parent[parent[cid]]
            cid = parent[cid]
        return cid

    for r in rows:
        partner = review_partner(r["_reason"])
        if partner is not None and partner[0] in by_id:
            parent[root(r["candidate_id"])] = root(partner[0])
    for copy, twin in put_back:
        if copy in by_id and twin in by_id:
            parent[root(copy)] = root(twin)
    groups: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        groups[root(r["candidate_id"])].append(r)
    return list(groups.values())
