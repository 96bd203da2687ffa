"""What a model bundle learned from: the manifest rows its training read, in its own training and in
each training it continued, less the photos each training left out as taken down, as bundle.json's
`learned_from` records them (model/lineage.py; a bundle trained before the record: walked through
`weights.continued_from` and `takedowns`). Torch-free: `mlc remove` and the shipping rule read it.

Two questions are asked here. A mining round's retrain may continue the previous network only when
that network never learned an image the new version evaluates on (stage.continue_blocker). And a
takedown (`mlc remove`) reaches the models: a network that learned from a photo taken down since, or
from a copy a takedown holds, or of which that cannot be told, is not continued
(stage.retrain_overrides), reused nor kept as the shipped model (shipping: `mlc run` asks
`taken_down_learned` once, `shipped_model`), and `mlc remove` lists it (`bundles_that_learned`), as
`mlc withdraw` lists those that learned from the version withdrawn (`bundles_that_learned_version`).
Learned means the train split, and the valid split, which set the model's thresholds (LEARNED_SPLITS);
test and probe are only scored.
"""

from __future__ import annotations

from pathlib import Path

from mlc_pipeline.config import Config
from mlc_pipeline.dataset.splits import manifest_splits
from mlc_pipeline.dataset.takedowns import Takedowns, read_takedowns
from mlc_pipeline.layout import VERSION_LISTINGS
from mlc_pipeline.manifest import read_manifest
from mlc_pipeline.model.lineage import UnknownLearning, learned_from

LEARNED_SPLITS = ("train", "valid")


def learned_rows(bundle: Path, datasets_root: Path, splits: tuple[str, ...] = LEARNED_SPLITS) -> list[dict]:
    """The manifest rows of `splits` that `bundle` learned from, in each training `learned_from` names,
    less those each training left out for a takedown. `datasets_root`: the data root's datasets/
    (bundle.json names "dataset/vN"). UnknownLearning when something cannot be read."""
    rows, manifests = [], {}
    for entry in learned_from(bundle):
        version, left_out = entry["dataset_version"], set(entry["left_out"])
        try:
            if version not in manifests:
                manifests[version] = read_manifest(datasets_root / version / "manifest.csv")
        except (OSError, ValueError) as exc:
            raise UnknownLearning(bundle, exc) from exc
        rows += [r for r in manifests[version] if r["split"] in splits
                 and f"{r.get('source')}:{r.get('photo_id')}" not in left_out]
    return rows


class LearnedAmong:
    """Which of `photos` ((source, photo_id)) bundles learned from, each version read once and row by
    row: what is kept of it is only those of `photos` in its train and valid rows (a takedown's few),
    not its rows. `mlc remove` asks it of every bundle of a data root, whose chains of trainings
    (`learned_from`) share their versions."""

    def __init__(self, photos: set[tuple[str, str]], datasets_root: Path):
        self.photos, self.root, self.versions = photos, datasets_root, {}

    def of(self, bundle: Path) -> set[tuple[str, str]]:
        "Those of the photos `bundle` learned from, less what each of its trainings left out; UnknownLearning."
        hit = set()
        for entry in learned_from(bundle):
            try:
                among = self.version(entry["dataset_version"])
            except (OSError, ValueError, IndexError) as exc:
                raise UnknownLearning(bundle, exc) from exc
            left_out = set(entry["left_out"])
            hit |= {p for p in among if f"{p[0]}:{p[1]}" not in left_out}
        return hit

    def version(self, version: str) -> set[tuple[str, str]]:
        if version not in self.versions:     # streamed as the build reads published splits
            self.versions[version] = {photo for photo, split in manifest_splits(self.manifest(version))
                                      if split in LEARNED_SPLITS and photo in self.photos}
        return self.versions[version]

    def manifest(self, version: str) -> Path:
        """A version's manifest.csv ("name/vN"): the version's own, else, in a cache of an object-store
        root that lacks it whole, its listing (datasets/<name>/.listings/vN/: the manifest alone, fetched
        by storeversions.pull_listing)."""
        whole = self.root / version / "manifest.csv"
        name, _, number = version.rpartition("/")
        listed = self.root / name / VERSION_LISTINGS / number / "manifest.csv"
        return listed if name and not whole.is_file() and listed.is_file() else whole


# A takedown answer nobody has asked yet (stage.retrain_overrides, pipeline): compared with ==, never `is`,
# for it crosses processes pickled (a Dask task runner), where an identity check fails.
ASK = "not asked yet: ask the bundle"


def taken_down_learned(cfg: Config, bundle: Path, gone: Takedowns | None = None) -> str | None:
    """Why `bundle` must not go on as a model: it learned from photos taken down since (`mlc remove`), or
    from copies a takedown holds, as the catalog says now; or it cannot be told (its bundle.json, or a
    version it learned from, unreadable: a version withdrawn for a takedown, say) while the catalog
    records takedowns. None when it learned from none, or nothing was ever taken down. `gone`: the
    catalog's takedowns, when the caller read them already."""
    gone = gone if gone is not None else read_takedowns(cfg)
    if not gone:
        return None
    try:
        hit = sorted(f"{s}:{p}" for s, p in LearnedAmong(gone.removed | gone.held, cfg.layout.datasets.parent).of(bundle))
    except UnknownLearning as exc:
        return f"{exc}, and the catalog records takedowns (`mlc remove`): it may have learned from one"
    if not hit:
        return None
    held = [p for p in hit if tuple(p.split(":", 1)) in gone.held]
    return (f"it learned from {len(hit)} photo(s) taken down"
            f"{f' (or held as copies of them: {len(held)})' if held else ''} (`mlc remove`): "
            f"{', '.join(hit[:10])}{' ...' if len(hit) > 10 else ''}")


def bundles_that_learned(cfg: Config, photos: set[tuple[str, str]], bundles: list | None = None
                         ) -> tuple[dict[str, list[str]], dict[str, str]]:
    """This data root's bundles that learned from any of `photos` ((source, photo_id)): (bundle name ->
    the photos, as "source:photo_id"; bundle name -> why what it learned cannot be read: a version
    withdrawn, a bundle it continued that is not at hand and not in the store). The newest first:
    models/LATEST is most often among them. One that cannot be told counts as having learned them
    for the shipping rule (`taken_down_learned`); `mlc remove` says so. `bundles`: registry.list_bundles'
    (with stored=True on an object-store root: the store's bundles too, from their bundle.json alone)."""
    learned = LearnedAmong(photos, cfg.layout.datasets.parent)
    return asked_of_bundles(cfg, bundles, lambda path: sorted(f"{s}:{p}" for s, p in learned.of(path)))


def bundles_that_learned_version(cfg: Config, dataset_version: str, bundles: list | None = None
                                 ) -> tuple[dict[str, str], dict[str, str]]:
    """This data root's bundles whose network learned from `dataset_version` ("name/vN"), in its own
    training or in one it continued, directly or through its ancestors (`learned_from`: bundle.json's
    record, or the chain of bundles continued): (bundle name -> "trained on it" or "continued a network
    trained on it"; bundle name -> why it cannot be told), as `bundles_that_learned`. bundle.json
    alone is read, no manifest: `mlc withdraw` asks it of a version it has just deleted."""
    def how(path: Path) -> str | None:
        trainings = [entry["dataset_version"] for entry in learned_from(path)]
        if trainings[-1:] == [dataset_version]:
            return "trained on it"
        return "continued a network trained on it" if dataset_version in trainings else None
    return asked_of_bundles(cfg, bundles, how)


def asked_of_bundles(cfg: Config, bundles: list | None, question) -> tuple[dict, dict[str, str]]:
    """`question` (a bundle's folder -> an answer, falsy for none; UnknownLearning) asked of `bundles`
    (registry.list_bundles'; None: this data root's), the newest first: (name -> answer; name -> why
    it cannot be told)."""
    from mlc_pipeline.model.registry import list_bundles
    found, unknown = {}, {}
    for info in reversed(list_bundles(cfg.layout.models) if bundles is None else bundles):
        try:
            hit = question(info.path)
        except UnknownLearning as exc:
            unknown[info.name] = str(exc)
            continue
        if hit:
            found[info.name] = hit
    return found, unknown
