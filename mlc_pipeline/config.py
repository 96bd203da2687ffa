"""The pipeline's YAML configuration, validated on load.

A wrong or missing key is a one-line `ConfigError` that names the key. Secrets (the Flickr key and
secret) never live here: they come from the environment, see `mlc_pipeline.secrets`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from mlc_pipeline.catalog_address import PostgresCatalog, check_url
from mlc_pipeline.config_checks import Strict, check_cwd_data_root, deep_merge, resolve_paths, yaml_problem
from mlc_pipeline.config_messages import ConfigError, check_override_classes, error_line, user_file  # re-exported
from mlc_pipeline.layout import DataLayout
from mlc_pipeline.secrets import URL_RE, check_storage_options, data_url_problem   # URL_RE: data_dir: s3://...

FLICKR_REST_URL = "https://api.flickr.com/services/rest/"
SIZE_KEYS = ("url_sq", "url_q", "url_t", "url_s", "url_n", "url_m", "url_z", "url_c", "url_l", "url_o")
LABEL_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,40}$")
RESERVED_LABELS = {"other", "none"}   # other: the negatives' label; none: "none of the classes" in reports/predict
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")   # one safe path component: no '/', no '..'
SPLIT_KEYS = ("train", "valid", "test")
DEFAULT_SUBSAMPLING = "4:2:0"     # build.jpeg_subsampling's default: counted in no version's fingerprint
# Flickr licence ids (stable; flickr.photos.licenses.getInfo) not free for a dataset: all rights reserved,
# non-commercial (NC) or no derivatives (ND). Warned about at collect time and stated on the data card.
RESTRICTED_LICENSES = {0: "All Rights Reserved", 1: "CC BY-NC-SA 2.0", 2: "CC BY-NC 2.0", 3: "CC BY-NC-ND 2.0",
                       6: "CC BY-ND 2.0", 13: "CC BY-ND 4.0", 14: "CC BY-NC 4.0", 15: "CC BY-NC-SA 4.0",
                       16: "CC BY-NC-ND 4.0"}
OPEN_LICENSES = {4: "CC BY 2.0", 5: "CC BY-SA 2.0", 7: "No known copyright restrictions", 8: "United States Government Work",
                 9: "CC0 1.0", 10: "Public Domain Mark 1.0", 11: "CC BY 4.0", 12: "CC BY-SA 4.0"}   # the rest of 0-16

log = logging.getLogger(__name__)


def query_key(query: str) -> str:
    """How two queries are compared wherever they are (shared queries, a takedown's --query): case and
    spacing aside, as a search engine reads them ("Kite  surfing" is "kite surfing")."""
    return " ".join(query.lower().split())


class RetrySettings(Strict):
    attempts: int = Field(6, ge=1, le=20)
    base_delay_s: float = Field(0.5, ge=0)
    max_delay_s: float = Field(30.0, ge=0)


class LocalWorld(Strict):
    """The bundled Flickr-compatible server, started in-process on loopback (`source.kind: local`)."""
    port: int = Field(8765, ge=0, le=65535)   # fixed, so recorded image URLs stay valid across runs
    seed: int = 0
    scale: float = Field(1.0, gt=0, le=10)
    folder: str | None = None          # serve a folder tree instead of the generated world
    query_map: dict[str, str] = {}     # folder mode: query text -> subfolder
    faults: str = ""                   # FaultSpec string, e.g. "http500=0.1,img429=0.2"
    result_cap: int = Field(4000, ge=1)


class SourceSettings(Strict):
    kind: Literal["flickr", "local", "urls"] = "flickr"
    csv: str | None = None             # kind urls: the URL list (url,label,...), relative to the config's folder
    rest_url: str = FLICKR_REST_URL
    allowed_hosts: list[str] = ["live.staticflickr.com"]
    licenses: list[int] | Literal["any"] = [4, 5, 9, 10, 11]
    sizes: list[str] = ["url_c", "url_z", "url_m"]
    per_host_concurrency: int = Field(16, ge=1, le=64)
    max_calls_per_hour: int = Field(3600, ge=1)
    per_page: int = Field(250, ge=1, le=500)
    result_cap: int = Field(4000, ge=1)   # Flickr's per-query limit; deeper needs date windows
    timeout_s: float = Field(20.0, gt=0)             # per read: a silent connection is cut after this
    download_deadline_s: float = Field(120.0, gt=0)  # per image, all attempts: a trickling host is cut
    api_deadline_s: float = Field(60.0, gt=0)        # per API call, each try: a trickling API is cut
    max_image_bytes: int = Field(20_000_000, ge=1024)
    max_retry_after_s: float = Field(120.0, ge=0)
    retry: RetrySettings = RetrySettings()
    safe_search: int = Field(1, ge=1, le=3)
    local: LocalWorld = LocalWorld()

    @field_validator("sizes")
    @classmethod
    def known_sizes(cls, sizes: list[str]) -> list[str]:
        unknown = [s for s in sizes if s not in SIZE_KEYS]
        if unknown or not sizes:
            raise ValueError(f"unknown size {unknown or '(none given)'}; choose from {', '.join(SIZE_KEYS)}")
        return sizes

    @field_validator("licenses", mode="before")
    @classmethod
    def licence_ids(cls, licenses: Any) -> Any:
        """Flickr licence ids or `any`, said with the ids (`all`, `[CC BY 2.0]` got pydantic's two union
        errors); `[]` lets no photo in, so collect found photos and kept none, without a word."""
        if licenses == "any" or (isinstance(licenses, list) and licenses and
                                 all(isinstance(i, int) for i in licenses)):   # yes: Strict's
            return licenses
        table = "; ".join(f"{i} {name}" for i, name in sorted({**RESTRICTED_LICENSES, **OPEN_LICENSES}.items()))
        forms = "a list of Flickr licence ids, e.g. [4, 5, 9, 10, 11], or any (every licence)"
        said = f"an empty list lets no photo in: give {forms}" if licenses == [] else \
            f"takes {forms}, not {licenses!r}"
        raise ValueError(f"{said}. The ids: {table}")

    @property
    def restricted_licenses(self) -> list[int]:
        """The restricted licence ids (RESTRICTED_LICENSES) this source setting lets in."""
        return sorted(RESTRICTED_LICENSES) if self.licenses == "any" else \
            [i for i in self.licenses if i in RESTRICTED_LICENSES]

    @field_validator("rest_url")
    @classmethod
    def http_url(cls, url: str) -> str:
        """Checked here, not at the first call: a URL requests cannot use was retried as "an
        unparseable API response" (the secrets21 audit), and one holding a credential would be logged."""
        from urllib.parse import parse_qs, urlsplit
        try:
            parts = urlsplit(url)
            parts.port                      # ValueError: not a number in 0-65535
        except ValueError as exc:
            raise ValueError(f"must be an http(s) URL such as {FLICKR_REST_URL} ({exc})") from None
        if parts.password is not None or any(re.search(r"key|token|secret|sig|pass|auth", k, re.I)
                                             for k in parse_qs(parts.query, keep_blank_values=True)):
            raise ValueError("holds a credential: remove it; the key and secret come from FLICKR_API_KEY / "
                             "FLICKR_API_SECRET (configs are copied into logs and artifacts)")
        if parts.scheme not in ("http", "https") or not parts.hostname or re.search(r"\s", url.strip()):
            raise ValueError(f"must be an http(s) URL such as {FLICKR_REST_URL}, got {url!r}")
        return url


class QuerySet(Strict):
    queries: list[str] = Field(min_length=1)
    count: int = Field(ge=1)

    @field_validator("queries")
    @classmethod
    def non_blank(cls, queries: list[str]) -> list[str]:
        if any(not q.strip() for q in queries):
            raise ValueError("queries must not be blank")
        return queries


class CurateSettings(Strict):
    min_side: int = Field(64, ge=1)
    max_aspect: float = Field(4.0, ge=1)
    max_pixels: int = Field(64_000_000, ge=1)
    hamming_threshold: int = Field(12, ge=0, le=32)   # measured on real photos: docs/curation.md, section 5
    workers: int | None = None


class BuildSettings(Strict):
    name: str = "default"
    max_side: int = Field(256, ge=32)
    jpeg_quality: int = Field(90, ge=50, le=100)
    # the copies' chroma: 4:2:0 (half resolution, Pillow's default) or 4:4:4 (full: docs/export.md, "The copy's colour")
    jpeg_subsampling: Literal["4:2:0", "4:2:2", "4:4:4"] = DEFAULT_SUBSAMPLING
    split: dict[str, float] = {"train": 0.7, "valid": 0.15, "test": 0.15}

    @field_validator("jpeg_subsampling", mode="before")
    @classmethod
    def as_written(cls, value: Any) -> Any:
        "YAML 1.1 reads an unquoted 4:4:4 as a base-60 number (14644): taken back as it was written."
        sexagesimal = {4 * 3600 + 2 * 60: "4:2:0", 4 * 3600 + 2 * 60 + 2: "4:2:2", 4 * 3600 + 4 * 60 + 4: "4:4:4"}
        return sexagesimal.get(value, value) if type(value) is int else value

    @field_validator("name")
    @classmethod
    def safe_name(cls, name: str) -> str:
        if not NAME_RE.match(name) or ".." in name:
            raise ValueError(f"{name!r} must be one folder name: letters, digits, '.', '-' or '_' "
                             "(no '/', no '..'), at most 64 characters")
        return name

    @field_validator("split")
    @classmethod
    def known_splits(cls, split: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(split) - set(SPLIT_KEYS))
        if unknown:
            raise ValueError(f"unknown split {unknown}; the splits are {', '.join(SPLIT_KEYS)}")
        if any(v < 0 for v in split.values()):
            raise ValueError("split fractions must not be negative")
        if split.get("train", 0) <= 0 or split.get("valid", 0) <= 0:
            raise ValueError("train and valid need a fraction above 0 (training learns on one, calibrates on the other)")
        if abs(sum(split.values()) - 1) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, they sum to {sum(split.values()):g}")
        return split


class TrainSettings(Strict):
    arch: str = "auto"                # auto: a fine-tuned ImageNet net if weights are at hand, else weights.RECIPES' scratch
    pretrained: str = "auto"          # auto | imagenet | none | a weights file
    yes_no_means = {"pretrained": ("none", "imagenet")}   # `pretrained: no` is from scratch
    image_size: int | None = Field(None, ge=16)   # None: the recipe's
    epochs: int | None = Field(None, ge=1)        # None: the recipe's (scratch: 45,000 images seen, 30-120)
    max_minutes: float | None = Field(None, gt=0)  # a bound: a fit plans its epochs to end within this (FitToBudget); null: all
    batch_size: int | None = Field(None, ge=1)    # None: the recipe's (scratch: 16, pretrained: 32; docs/training.md)
    lr: float | None = Field(None, gt=0)
    other_mode: Literal["negative", "class"] = "class"    # class: an "other" output vetoing the classes (losses.py)
    head: Literal["sigmoid", "softmax"] = "sigmoid"
    threshold_mode: Literal["per-class-f1", "global-f1", "target-precision"] = "per-class-f1"
    target_precision: float = Field(0.95, gt=0, le=1)
    f1_tolerance: float = Field(0.02, ge=0, lt=1)   # F1 modes: highest threshold within this of the best
    seed: int = 42
    compare_baselines: bool = False   # also train the comparison heads on round 0 (doubles training time)
    max_unknown_accepted: float | None = Field(0.05, ge=0, le=1)   # cap on held-out "other" accepted (null: F1 point)
    crop: Literal["squish", "random"] | None = None   # None: the recipe's (weights.RECIPES)
    min_scale: float = Field(0.35, gt=0, le=1)
    mixup: float | None = Field(None, ge=0)          # None: the recipe's
    tta: bool = False
    precision: Literal["auto", "float32", "bfloat16"] = "auto"   # auto: bfloat16 on a CPU that has it (model/precision.py)


class MineSettings(Strict):
    rounds: int = Field(1, ge=0, le=10)
    pool: QuerySet | None = None    # fresh "other" candidates, scored for hard negatives
    min_improvement: float = Field(0.0, ge=0)   # stop early when unknown-accepted improves by no more than
                                                # this (a round that raises it is not shipped, and stops)
    max_f1_loss: float = Field(0.05, ge=0, le=1)   # a round losing more macro F1 (mean of valid and test)
                                                   # than this is not shipped, and stops (docs/training.md)
    hold_above: float | None = Field(None, gt=0, le=1.01)   # held for review at this score or more; None: held
                                                            # when it looks like the class in the model's features
                                                            # (model/likeness.py, docs/training.md); 1.01: never
    max_per_round: int | None = Field(None, ge=1)    # None: as many as the training "other" set holds
    calibration_share: float = Field(1 / 3, ge=0, lt=1)   # mined negatives that validate (by photo); rest train
    review_below: float = Field(0.05, gt=0, lt=1)    # own label under this: listed in <bundle>/review.csv
    retrain: Literal["continue", "scratch"] = "continue"   # continue: the previous round's network, for
                                                            # retrain_epochs (docs/training.md "Retraining")
    retrain_epochs: int | None = Field(None, ge=1)   # continue: None = a third of the first training's


class CatalogSettings(Strict):
    url: str | None = None          # postgresql://user@host:5432/db (password: PGPASSWORD / ~/.pgpass); None: SQLite

    @field_validator("url")
    @classmethod
    def postgres_url(cls, url: str | None) -> str | None:
        return None if url is None else check_url(url)


class ClusterSettings(Strict):
    """Spread the work inside collect, curate and mining over a Dask cluster (mlc_pipeline/executor.py)."""
    address: str | None = None      # tcp://scheduler:8786; $MLC_DASK_ADDRESS wins; None: this process
    download_chunk: int = Field(64, ge=1)    # download jobs per task
    hash_chunk: int = Field(128, ge=1)       # files verified + hashed per task
    score_chunk: int = Field(512, ge=1)      # pool images scored per task when mining
    no_workers_warn_s: float = Field(60, gt=0)   # chunks waiting and no worker connected: a warning this often
    no_workers_timeout_s: float | None = Field(900, gt=0)   # ... and after this long the stage fails; null: waits


def default_cache_dir(url: str) -> Path:
    """Where an object-store data root is cached when `cache_dir` is not set: one folder per URL."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", URL_RE.sub("", url)).strip("-")[:60]
    return base / "mlc" / f"{readable}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"


class Config(Strict):
    data_dir: Path = Path("data")     # a URL here becomes data_url; data_dir is then the local cache
    data_url: str | None = None       # the object-store data root (set from data_dir), see sync.py
    storage_options: dict[str, Any] = {}   # fsspec options, e.g. endpoint_url; credentials from the environment
    cache_dir: Path | None = None
    catalog: CatalogSettings = CatalogSettings()
    source: SourceSettings = SourceSettings()
    classes: dict[str, QuerySet] = Field(min_length=1)
    other: QuerySet
    probe: QuerySet | None = None   # unknown kinds: evaluation only, never trained on
    curate: CurateSettings = CurateSettings()
    build: BuildSettings = BuildSettings()
    train: TrainSettings = TrainSettings()
    mine: MineSettings = MineSettings()
    cluster: ClusterSettings = ClusterSettings()

    @model_validator(mode="before")
    @classmethod
    def object_store_root(cls, data: Any) -> Any:
        """`data_dir: s3://bucket/prefix`: the stages keep working on a local cache (`cache_dir`), which
        sync.py fetches from and publishes to the URL at the stage boundaries."""
        url = data.get("data_dir") if isinstance(data, dict) else None
        if isinstance(url, str) and URL_RE.match(url):
            url = url.rstrip("/")
            data = {**data, "data_url": url, "data_dir": data.get("cache_dir") or default_cache_dir(url)}
        return data

    @field_validator("storage_options")
    @classmethod
    def no_secrets(cls, options: dict[str, Any]) -> dict[str, Any]:
        """The config is recorded in every model bundle: credentials come from the environment."""
        return check_storage_options(options)

    @field_validator("classes")
    @classmethod
    def label_names(cls, classes: dict[str, QuerySet]) -> dict[str, QuerySet]:
        for name in classes:
            if not LABEL_RE.match(name) or name in RESERVED_LABELS:
                raise ValueError(f"class name {name!r} must be lowercase letters, digits, '-' or '_' and not 'other' "
                                 "or 'none' (the reports' words for the negatives and for no class)")
        return classes

    @model_validator(mode="after")
    def local_hosts(self) -> "Config":
        if self.source.kind == "flickr" and not self.source.allowed_hosts:
            raise ValueError("source.allowed_hosts must name at least one image host")
        if self.source.kind == "urls" and not self.source.csv:
            raise ValueError("source.csv: kind urls needs the URL list, e.g. csv: images.csv (columns url, label)")
        return self

    @model_validator(mode="after")
    def shared_queries(self) -> "Config":
        """A query under two sets finds the same photos for both: say what happens to them."""
        sets = [(f"classes.{name}", q) for name, q in self.classes.items()] + [("other", self.other)]
        sets += [("probe", self.probe)] if self.probe else []
        sets += [("mine.pool", self.mine.pool)] if self.mine.pool else []
        seen: dict[str, str] = {}
        for where, qs in sets:
            own = self.source.kind == "urls" and where in ("probe", "mine.pool")   # a URL list's rows have a purpose
            for query in qs.queries:
                key = (where if own else "") + query_key(query)
                if key in seen and seen[key] != where:
                    log.warning("config: query %r is under both %s and %s: the photos it finds %s", query,
                                seen[key], where, "get both labels" if where.startswith("classes.")
                                else f"stay in {seen[key]} only (a class wins over other, training over "
                                     "probe and pool)")
                seen.setdefault(key, where)
        return self

    @property
    def layout(self) -> DataLayout:
        return DataLayout(self.data_dir, self.build.name)

    @property
    def catalog_path(self):
        """What `Catalog()` opens: the SQLite file under data_dir, or the configured PostgreSQL catalog."""
        if self.catalog.url:
            return PostgresCatalog(self.catalog.url, self.data_dir)
        return self.layout.catalog


def parse_config(data: dict, base_dir: Path | None = None) -> Config:
    """Validate a config mapping; its relative paths (PATH_SETTINGS) are taken from `base_dir` when given."""
    if not isinstance(data, dict):
        raise ConfigError("config: the file must hold a YAML mapping")
    if problem := data_url_problem(data.get("data_dir")):      # said here: the validator makes a cache path of it
        raise ConfigError(f"config: data_dir: {problem}")
    if base_dir is not None:
        data = resolve_paths(data, base_dir)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"config: {error_line(exc, model=Config)}") from None
    return cfg


def load_config(path: str | Path, overrides: dict | None = None) -> Config:
    """Load and validate a YAML config. A relative path in the file (`data_dir`, `source.local.folder`:
    PATH_SETTINGS) is taken from the config file's folder (so a command does the same from any
    directory); one given with `--set data_dir=...` from the current directory, as any path typed on a
    command line."""
    path = Path(path)
    try:
        with user_file("config", path, "YAML"):
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {path} is not valid YAML: {yaml_problem(exc)}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a YAML mapping (key: value lines), not a {type(data).__name__}")
    overrides = dict(overrides or {})
    overrides = resolve_paths(overrides, Path.cwd())
    check_override_classes(data or {}, overrides, path)
    check_cwd_data_root(data or {}, overrides, path)     # a 0.1.0 user's data/ (upgrade29 audit)
    return parse_config(deep_merge(data or {}, overrides), path.resolve().parent)


def parse_overrides(items: list[str] | None) -> dict:
    """--set train.epochs=2 --set source.local.scale=0.2 -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=2")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        try:
            node[leaf] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({yaml_problem(exc)}); "
                              f"quote it to pass a string, e.g. --set '{key}=\"{value}\"'") from None
    return out
