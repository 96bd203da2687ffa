"""Export a published dataset version for other tools: `mlc export VERSION --format FORMAT`.

Formats (docs/export.md shows how each tool loads them):
  imagefolder   <split>/<label>/<file>.jpg, a folder per label (torchvision/keras ImageFolder);
                a multi-label image is copied into each of its labels' folders, "other" holds the
                images of none of the classes; metadata.csv lists every image once, with all its labels
  hf            a Hugging Face `imagefolder`: train/validation/test/probe folders, each with a
                metadata.parquet (labels as a list column) and a README.md whose YAML names the splits
  webdataset    <split>-NNNNNN.tar shards: <key>.jpg + <key>.json (labels, split, source, licence)
  fiftyone      a FiftyOneImageClassificationDataset (data/ + labels.json, multi-label as lists)
                plus samples.json: split, source and licence of every sample (export_fiftyone.py)

Every export carries the version's dataset card, an ATTRIBUTION.md of the images it holds (named as
they are named in the export) and, per image, the licence, owner, title and source URL. The version
is verified (its SHA256SUMS) before anything is read. Photos taken down since the version was
published (`mlc remove`), and the copies a takedown holds as the same pictures, are left out (the
caller reads them from the catalog: dataset/takedowns.py), and export.json lists them: a published
version is immutable, an export of it is a new copy and must not carry them. export.json's licences
count the images exported, not the version's.
An export is built aside and renamed into place; an existing output is replaced only with `force`,
and only when it is an earlier export (export.json) or an empty folder, never anything else.
"""

from __future__ import annotations

import csv
import io
import hashlib
import json
import os
import re
import shutil
import tarfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from glob import escape as glob_escape
from pathlib import Path

import yaml

from mlc_pipeline.dataset.card import attribution, table_cell
from mlc_pipeline.dataset.takedowns import Takedowns, held_words, photo_name
from mlc_pipeline.dataset.verify import verified_version
from mlc_pipeline.fsutil import errors_name, pid_alive
from mlc_pipeline.manifest import EXPORT_MARKER, resolve_version, spreadsheet_safe, withdrawal

FORMATS = ("imagefolder", "hf", "webdataset", "fiftyone")
OTHER_FOLDER = "other"               # images of none of the classes
HF_SPLITS = {"train": "train", "valid": "validation", "test": "test", "probe": "probe"}
SHARD_SIZE = 1000


class ExportError(Exception):
    """A one-line reason an export cannot be made."""


@dataclass
class ExportResult:
    path: Path
    format: str
    images: int
    files: int                       # image files written (a multi-label image counts once per folder)
    taken_down: list[str]            # "source:photo_id" of the version's photos left out (taken down or held)
    takedowns_checked: bool = True   # False: no catalog was read, so none could be left out
    held: list[str] = field(default_factory=list)    # those of `taken_down` a takedown holds (not removed)

    def takedown_note(self) -> str | None:
        "What the export did about takedowns, for the user, when there is anything to say."
        if self.taken_down:
            named = [f"{p} (held)" if p in self.held else p for p in self.taken_down[:10]]
            return (f"left out {len(self.taken_down)} photo(s) taken down since the version was published"
                    f"{held_words(self.held)} (`mlc remove`; listed in export.json): {', '.join(named)}"
                    f"{' ...' if len(self.taken_down) > 10 else ''}")
        if not self.takedowns_checked:
            return ("takedowns not checked: without -c CONFIG (or with no catalog there), photos taken down "
                    "since the version was published stay in the export")
        return None


def version_folder(spec: str, datasets_root: Path | None) -> Path:
    """VERSION is a version folder (has manifest.csv), or vN / latest under `datasets_root`."""
    as_path = Path(spec)
    if (as_path / "manifest.csv").is_file():
        return as_path
    if datasets_root is None:
        raise ExportError(f"{spec!r} is not a dataset version folder (no manifest.csv there); "
                          f"give a folder, or -c CONFIG with a version name like v1 or latest")
    return datasets_root / resolve_version(datasets_root, spec)      # UnknownVersion: one line


def labels_of(row: dict) -> list[str]:
    return row["labels"].split()


def metadata_of(row: dict) -> dict:
    """Every manifest column but the path and the split, labels as a list: attribution rides along."""
    out = {k: v for k, v in row.items() if k not in ("path", "split")}
    out["labels"] = labels_of(row)
    return out


def sample_key(row: dict) -> str:
    """A file stem safe for every format: WebDataset cuts keys at the first dot of a file name."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", Path(row["path"]).stem)


def unique_keys(rows: list[dict]) -> dict[str, dict]:
    keys: dict[str, dict] = {}
    for r in rows:
        key = sample_key(r)
        if key in keys:
            raise ExportError(f"two images map to the same export name {key!r} ({keys[key]['path']}, {r['path']})")
        keys[key] = r
    return keys


def export_version(version_dir: str | Path, fmt: str, out: str | Path, force: bool = False,
                   shard_size: int | None = None,
                   taken_down: Takedowns | set[tuple[str, str]] | None = None,
                   source: str | None = None) -> ExportResult:
    """`taken_down`: what the catalog records as taken down (`takedowns.read_takedowns`: the photos
    removed and the copies held; a set: (source, photo_id) of photos removed); the version's rows among
    them are left out (None: no catalog was read, nothing is left out). `shard_size`: webdataset's
    images per shard (default SHARD_SIZE); refused for the other formats. `source`: the version as
    export.json names it (`store_source`: an object-store data root's URL of it; None: the folder)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    if shard_size is not None and fmt != "webdataset":
        raise ExportError(f"--shard-size is for --format webdataset ({'an' if fmt[0] in 'aeiou' else 'a'} {fmt} export has no shards)")
    shard_size = SHARD_SIZE if shard_size is None else shard_size
    version_dir, out = Path(version_dir), Path(out)
    check_destination(version_dir, out, force)
    meta, rows = verified_version(version_dir)     # VersionDamaged: one line, nothing written
    gone = Takedowns(frozenset(), frozenset()) if taken_down is None else taken_down if isinstance(
        taken_down, Takedowns) else Takedowns(frozenset(taken_down), frozenset())
    rows, left_out = gone.left_out_of(rows)
    held = gone.held_names(left_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(out)
    tmp = out.parent / f".{out.name}.export-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with errors_name(out, tmp):      # ENOSPC, read-only: --out is named, not a file or tmp
            tmp.mkdir()
            files = WRITERS[fmt](version_dir, rows, tmp, meta, shard_size)
            # the images as this export names them (every format keeps the sample key in its file names)
            (tmp / "ATTRIBUTION.md").write_text(attribution([{**r, "path": k} for k, r in unique_keys(rows).items()],
                                                            f"{meta.get('name')} {meta.get('version')}, exported as {fmt}"))
            if (version_dir / "README.md").is_file() and not (tmp / "README.md").exists():
                shutil.copyfile(version_dir / "README.md", tmp / "README.md")
            if left_out and (tmp / "README.md").is_file():  # the card counts the version: say what this copy lacks
                card = (tmp / "README.md").read_text()
                head, sep, body = card.partition("\n---\n") if card.startswith("---\n") else ("", "", card)
                note = (f"> This export holds {len(rows)} images: the version's card below counts "
                        f"{len(rows) + len(left_out)}; {len(left_out)} photo(s) taken down since the version was "
                        f"built{held_words(held)}{',' if held else ''} are left out (`export.json`, "
                        f"`taken_down_left_out`).\n\n")
                (tmp / "README.md").write_text(head + sep + ("\n" if sep else "") + note + body.lstrip("\n"))
            (tmp / EXPORT_MARKER).write_text(json.dumps({
                "format": fmt, "dataset": meta.get("name"), "version": meta.get("version"),
                "fingerprint": meta.get("fingerprint"), "images": len(rows), "files": files,
                "taken_down_left_out": [photo_name(r) for r in left_out], "held_left_out": held,
                "takedowns_checked": taken_down is not None,
                "source": source or str(version_dir.resolve()), "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "licenses": licence_counts(rows),
                **({"class_folders": class_folders(rows)} if fmt == "imagefolder" else {})}, indent=2))
            check_destination(version_dir, out, force)   # again: another export may have written `out` meanwhile
            refuse_withdrawn(version_dir, out)          # a withdrawal meanwhile wins: no export of it appears
            replace_dir(tmp, out)
    except OSError:
        refuse_withdrawn(version_dir, out)      # a file of the version gone: a withdrawal at work, in one line
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return ExportResult(out, fmt, len(rows), files, [photo_name(r) for r in left_out], taken_down is not None, held)


def refuse_withdrawn(version_dir: Path, out: Path) -> None:
    """ExportError when the version was withdrawn (its ledger names it: `mlc withdraw` writes that before it
    deletes the folder) or its folder is gone, while it was being exported: `mlc withdraw` waits for no
    export, and wins (the concurrency28 audit: a FileNotFoundError traceback mid-copy)."""
    withdrawn = withdrawal(version_dir.parent, version_dir.name)
    if withdrawn is None and (version_dir / "dataset.json").is_file():
        return
    what = f"withdrawn ({withdrawn['reason']})" if withdrawn else "deleted"
    raise ExportError(f"{version_dir.parent.name} {version_dir.name} was {what} while it was being exported; "
                      f"nothing was written to {out}")


def store_source(cfg, version_dir: Path) -> str | None:
    """A version of an object-store data root as the store names it, its URL (the config refuses one
    with credentials), for export.json's "source"; None for a local data root or a folder outside the
    cache, named as it is (the beyond28 audit: exports named the exporting machine's cache folder)."""
    cache = cfg.data_dir.resolve() if cfg is not None and cfg.data_url else None
    if cache is None or cache not in version_dir.resolve().parents:
        return None
    return f"{cfg.data_url.rstrip('/')}/{version_dir.resolve().relative_to(cache).as_posix()}"


def class_folders(rows: list[dict]) -> list[str]:
    """An imagefolder export's label folders over all its splits, sorted as torchvision's ImageFolder
    sorts them: the classes to load every split with (docs/export.md). ImageFolder on one split
    numbers only the folders that split has, so a split lacking a class (probe holds "other" only)
    gets other indices than train's (the export26 audit)."""
    return sorted({label for r in rows for label in labels_of(r) or [OTHER_FOLDER]})


def licence_counts(rows: list[dict]) -> dict[str, int]:
    """Images per licence of the rows exported (the version's dataset.json counts the version's: a
    takedown leaves some out of an export)."""
    return dict(sorted(Counter(r["license"] for r in rows).items()))


def check_destination(version_dir: Path, out: Path, force: bool) -> None:
    """Never write into a published version, never replace what is not an earlier export."""
    src, dst = version_dir.resolve(), out.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise ExportError(f"--out {out} overlaps the dataset version {version_dir}; choose another folder")
    if src.parent in dst.parents:              # next to the versions, an export would pass for one
        raise ExportError(f"--out {out} is inside {version_dir.parent}, where the versions are published; "
                          f"choose another folder")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ExportError(f"--out {out} exists and is not a folder; choose another path")
    if not out.exists():
        return
    if not force:
        raise ExportError(f"{out} already exists; pass --force to replace it")
    if not (out / EXPORT_MARKER).is_file() and any(out.iterdir()):
        raise ExportError(f"{out} is not an earlier export (no {EXPORT_MARKER}) and not empty; --force replaces only "
                          f"exports: remove it yourself or choose another folder")


def remove_stale_tmp(out: Path) -> None:
    """Folders a killed export left next to `out` (`.<name>.export-<pid>-<id>`, `.<name>.replaced-...`);
    a live exporter's are left alone."""
    for stale in out.parent.glob(f".{glob_escape(out.name)}.*-*-*"):
        kind, pid = stale.name[len(out.name) + 2:].split("-")[:2]
        if kind in ("export", "replaced") and pid.isdigit() and not pid_alive(int(pid)) and stale.is_dir():
            shutil.rmtree(stale)


def replace_dir(new: Path, out: Path) -> None:
    """Rename `new` to `out`; an existing `out` is moved aside first and deleted after."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.replaced-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
    try:
        os.rename(new, out)
    except OSError:
        if old is not None:
            os.rename(old, out)                 # put the earlier export back
        raise
    if old is not None:
        shutil.rmtree(old)


def write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows(rows)


def write_imagefolder(version_dir: Path, rows: list[dict], out: Path, meta: dict, shard_size: int) -> int:
    listed, files = [], 0
    for key, r in unique_keys(rows).items():
        folders = labels_of(r) or [OTHER_FOLDER]
        places = [f"{r['split']}/{label}/{key}.jpg" for label in folders]
        for place in places:
            (out / place).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(version_dir / r["path"], out / place)
            files += 1
        listed.append({"file": places[0], "also_in": " ".join(places[1:]), "labels": r["labels"],
                       "split": r["split"], **{k: v for k, v in r.items() if k not in ("path", "labels", "split")}})
    write_csv(out / "metadata.csv", [spreadsheet_safe(r) for r in listed])     # no formula: as manifest.csv
    return files


def write_hf(version_dir: Path, rows: list[dict], out: Path, meta: dict, shard_size: int) -> int:
    per_split: dict[str, list[dict]] = {}
    for key, r in unique_keys(rows).items():
        split = HF_SPLITS.get(r["split"], r["split"])
        (out / split).mkdir(exist_ok=True)
        shutil.copyfile(version_dir / r["path"], out / split / f"{key}.jpg")
        per_split.setdefault(split, []).append({"file_name": f"{key}.jpg", **metadata_of(r)})
    for split, items in per_split.items():
        write_parquet(out / split / "metadata.parquet", items)
    sizes = {split: sum((out / split / item["file_name"]).stat().st_size for item in items)
             for split, items in per_split.items()}
    (out / "README.md").write_text(hf_card(version_dir, meta, per_split, sizes))
    return len(rows)


def write_parquet(path: Path, items: list[dict]) -> None:
    """Typed metadata: `datasets` requires every split's metadata to have the same column types, and
    JSON cannot type an empty list (a split of "other" images only would read as list<null>)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ExportError("--format hf needs pyarrow: pip install 'mlc-pipeline[export]'") from None
    columns = list(dict.fromkeys(k for item in items for k in item))
    schema = pa.schema([(c, pa.list_(pa.string()) if c == "labels" else pa.string()) for c in columns])
    table = pa.Table.from_pylist([{c: item.get(c) or [] if c == "labels" else str(item.get(c, ""))
                                   for c in columns} for item in items], schema=schema)
    pq.write_table(table, path)


def hf_card(version_dir: Path, meta: dict, per_split: dict[str, list[dict]], sizes: dict[str, int]) -> str:
    """The dataset card with the YAML header the Hub and `load_dataset(folder)` read: which folder is
    which split (probe is not one of the names `datasets` guesses), the column types (a split of
    "other" images only would otherwise give `labels` no type), and each split's size and its images'
    bytes (`sizes`), as `datasets` reads a split (name, num_bytes, num_examples: without num_bytes it
    warned and ignored them all). `datasets` caches a folder with a `configs` block under a key made of
    this header and the folder's name only: without the sizes, an export made again after a takedown,
    or another project's export of the same name, loaded an earlier export's rows (a user's audit).
    The licences named are those of the rows exported."""
    columns = list(dict.fromkeys(k for items in per_split.values() for item in items for k in item))
    features = [{"name": "image", "dtype": "image"}, {"name": "labels", "sequence": "string"}]
    features += [{"name": c, "dtype": "string"} for c in columns if c not in ("file_name", "labels")]
    order = [s for s in HF_SPLITS.values() if s in per_split] + sorted(set(per_split) - set(HF_SPLITS.values()))
    licences = sorted({item["license"] or "unknown" for items in per_split.values() for item in items})
    # what the rows are: the version's fingerprint and this export's images (a takedown leaves some out)
    identity = (f"mlc-pipeline {meta.get('name')} {meta.get('version')}, fingerprint {meta.get('fingerprint')}, rows "
                + hashlib.sha256(json.dumps(per_split, sort_keys=True).encode()).hexdigest()[:16])
    header = {"license": "other", "task_categories": ["image-classification"],
              "configs": [{"config_name": "default", "description": identity,
                           "data_files": [{"split": s, "path": f"{s}/*"} for s in order]}],
              "dataset_info": {"features": features,
                               "splits": [{"name": s, "num_bytes": sizes[s], "num_examples": len(per_split[s])}
                                          for s in order],
                               "download_size": sum(sizes.values()), "dataset_size": sum(sizes.values())}}
    card = (version_dir / "README.md").read_text() if (version_dir / "README.md").is_file() else ""
    # safe_dump quotes what needs it (dataset.json's name is text to YAML): no line of the header is
    # `---`, which would end it (a value's later lines are indented)
    return ("---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=float("inf")) + "---\n\n"
            f"Licences differ per image: see each row's `license`, `owner` and `url`, and ATTRIBUTION.md "
            f"({'; '.join(map(table_cell, licences)) or 'none recorded'}).\n\n" + card)


def write_webdataset(version_dir: Path, rows: list[dict], out: Path, meta: dict, shard_size: int) -> int:
    """Plain tar files in WebDataset's naming rules: members grouped by key, `<key>.<ext>`."""
    if shard_size < 1:
        raise ExportError("--shard-size must be at least 1")
    mtime = int(meta.get("created_at") or 0)      # the version's time: the same export, the same bytes
    by_split: dict[str, list[tuple[str, dict]]] = {}
    for key, r in unique_keys(rows).items():
        by_split.setdefault(r["split"], []).append((key, r))
    index = {}
    for split, items in sorted(by_split.items()):
        shards = []
        for start in range(0, len(items), shard_size):
            name = f"{split}-{start // shard_size:06d}.tar"
            with tarfile.open(out / name, "w", format=tarfile.PAX_FORMAT) as tar:
                for key, r in items[start:start + shard_size]:
                    add_bytes(tar, f"{key}.jpg", (version_dir / r["path"]).read_bytes(), mtime)
                    add_bytes(tar, f"{key}.json", json.dumps({**metadata_of(r), "split": r["split"]},
                                                             ensure_ascii=False).encode(), mtime)
            shards.append({"file": name, "samples": len(items[start:start + shard_size])})
        index[split] = shards
    (out / "shards.json").write_text(json.dumps(index, indent=2))
    return len(rows)


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), mtime, 0o644
    tar.addfile(info, io.BytesIO(data))


def write_fiftyone(version_dir: Path, rows: list[dict], out: Path, meta: dict, shard_size: int) -> int:
    from mlc_pipeline.dataset.export_fiftyone import write_fiftyone_layout
    return write_fiftyone_layout(version_dir, unique_keys(rows), out, meta)


WRITERS = {"imagefolder": write_imagefolder, "hf": write_hf, "webdataset": write_webdataset,
           "fiftyone": write_fiftyone}
