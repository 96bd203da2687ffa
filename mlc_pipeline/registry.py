"""Model bundles as things to manage: list them, compare two, promote one to LATEST, name one.

`data/models/<bundle>/` holds bundle.json and metrics.json (mlc_pipeline/train.py); `data/models/LATEST`
names the product model (a text file, so it survives copies and filesystems without links). Training
moves it (models.train_version); `promote` moves it by hand, atomically, after checking that the
bundle is complete and its export.pkl is the file bundle.json recorded (nothing is unpickled).

A bundle is named on the command line by its folder, its name under the models folder, or `latest`.
Nothing here imports torch: listing and promoting are instant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .config import ConfigError
from .dataset import write_text_atomic
from .evaluate import compare_table, pct
from .hashing import sha256_file
from .modelreport import network_line

POINTER = "LATEST"


class RegistryError(ConfigError):
    """A one-line reason (exit 2): no such bundle, no LATEST, an incomplete bundle."""


@dataclass
class BundleInfo:
    name: str
    path: Path
    latest: bool = False
    dataset_version: str = ""
    created_at: str = ""
    network: str = ""
    head: str = ""
    test: dict = field(default_factory=dict)       # metrics.json's test metrics ({} when missing)
    problem: str | None = None                     # why it cannot be used, or None


def models_dir(cfg) -> Path:
    """models.models_root, without importing models (which imports torch and fastai)."""
    return cfg.data_dir / "models"


def latest_name(models_dir: Path) -> str | None:
    try:
        return (models_dir / POINTER).read_text().strip() or None
    except FileNotFoundError:
        return None


def resolve_bundle(spec: str, models_dir: Path) -> Path:
    """`latest`, a bundle folder, or a bundle name under `models_dir`."""
    if spec == "latest":
        name = latest_name(models_dir)
        if name is None:
            raise RegistryError(f"no {models_dir / POINTER}: no model trained or promoted there yet "
                                f"(train one, or pass -c CONFIG for another data root)")
        if not (models_dir / name).is_dir():
            raise RegistryError(f"{models_dir / POINTER} names {name!r}, which is not a folder under {models_dir}")
        return models_dir / name
    if Path(spec).is_dir():
        return Path(spec)
    if "/" not in spec and (models_dir / spec).is_dir():
        return models_dir / spec
    raise RegistryError(f"no model bundle {spec!r}: not a folder, nor a bundle under {models_dir} "
                        f"(`mlc models -c CONFIG` lists them)")


def read_info(path: Path, latest: str | None = None) -> BundleInfo:
    info = BundleInfo(name=path.name, path=path, latest=path.name == latest)
    try:
        meta = json.loads((path / "bundle.json").read_text())
    except (OSError, ValueError) as exc:
        info.problem = f"bundle.json unreadable ({type(exc).__name__})"
        return info
    info.dataset_version = str(meta.get("dataset_version", ""))
    info.created_at = str(meta.get("created_at", ""))
    info.head = f"{meta.get('head', '?')}/{meta.get('other_mode', '?')}"
    info.network = network_line(meta).split(";")[0]     # the network and its weights; not why auto chose it
    try:
        info.test = json.loads((path / "metrics.json").read_text()).get("test", {})
    except (OSError, ValueError) as exc:
        info.problem = f"metrics.json unreadable ({type(exc).__name__})"
    if not (path / "export.pkl").is_file():
        info.problem = "export.pkl missing"
    return info


def list_bundles(models_dir: Path) -> list[BundleInfo]:
    """Every bundle folder (a folder with bundle.json, not one still being written), oldest first."""
    if not models_dir.is_dir():
        return []
    latest = latest_name(models_dir)
    folders = [p for p in models_dir.iterdir() if p.is_dir() and ".tmp-" not in p.name and (p / "bundle.json").exists()]
    infos = [read_info(p, latest) for p in folders]
    return sorted(infos, key=lambda i: (i.created_at, i.name))


def metric(test: dict, key: str) -> str:
    value = test.get(key)
    if value is None:
        return "n/a"
    return f"{value:.3f}" if key == "macro_f1" else pct(value)


def bundles_table(infos: list[BundleInfo]) -> str:
    lines = ["| | bundle | dataset | created | macro F1 | unknown accepted (test other) | unknown accepted (probe) "
             "| head | network |", "|---|---|---|---|---|---|---|---|---|"]
    for i in infos:
        network = i.problem and f"UNUSABLE: {i.problem}" or i.network
        lines.append(f"| {'LATEST' if i.latest else ''} | {i.name} | {i.dataset_version} | {i.created_at} "
                     f"| {metric(i.test, 'macro_f1')} | {metric(i.test, 'unknown_accepted')} "
                     f"| {metric(i.test, 'probe_accepted')} | {i.head} | {network} |")
    return "\n".join(lines) + "\n"


def compare(a: Path, b: Path) -> str:
    """Test metrics side by side, per-class F1, then the settings that differ."""
    infos = [read_info(a), read_info(b)]
    for i in infos:
        if not i.test:
            raise RegistryError(f"{i.path}: no test metrics to compare ({i.problem or 'metrics.json has no test'})")
    out = [compare_table([(i.name, i.test) for i in infos])]
    classes = sorted(set(infos[0].test.get("per_class", {})) | set(infos[1].test.get("per_class", {})))
    out.append("| class | " + " | ".join(f"F1 {i.name}" for i in infos) + " |\n|---|---|---|")
    for c in classes:
        cells = [i.test.get("per_class", {}).get(c, {}).get("f1") for i in infos]
        out.append(f"| {c} | " + " | ".join("n/a" if v is None else f"{v:.3f}" for v in cells) + " |")
    settings = [settings_of(i.path) for i in infos]
    differing = [k for k in sorted(set(settings[0]) | set(settings[1])) if settings[0].get(k) != settings[1].get(k)]
    out.append("\nsettings that differ:" if differing else "\nsettings: identical")
    out += [f"  {k}: {settings[0].get(k)!r} -> {settings[1].get(k)!r}" for k in differing]
    return "\n".join(out) + "\n"


def settings_of(path: Path) -> dict:
    meta = json.loads((path / "bundle.json").read_text())
    flat = {k: meta.get(k) for k in ("dataset_version", "arch", "image_size", "pretrained", "head", "other_mode",
                                     "classes", "n_train")}
    flat.update({f"config.{k}": v for k, v in (meta.get("config") or {}).items()})
    flat["thresholds"] = [round(t, 3) for t in meta.get("thresholds") or []] or None
    return flat


def check_bundle(path: Path) -> None:
    """Complete and unaltered, without unpickling: what `load_bundle` checks first."""
    from .predict import REQUIRED_KEYS
    try:
        meta = json.loads((path / "bundle.json").read_text())
    except (OSError, ValueError) as exc:
        raise RegistryError(f"{path}: not a usable bundle: bundle.json unreadable ({type(exc).__name__})") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise RegistryError(f"{path}: not a usable bundle: bundle.json lacks {missing}")
    if not (path / "export.pkl").is_file():
        raise RegistryError(f"{path}: not a usable bundle: export.pkl missing")
    if sha256_file(path / "export.pkl") != meta["export_sha256"]:
        raise RegistryError(f"{path}: not a usable bundle: export.pkl is not the file bundle.json recorded")


def promote(spec: str, models_dir: Path) -> tuple[str | None, str]:
    """Point LATEST at a bundle under `models_dir`; returns (previous, new) names."""
    path = resolve_bundle(spec, models_dir)
    if path.resolve().parent != models_dir.resolve():
        raise RegistryError(f"{path} is not under {models_dir}: LATEST names a bundle there (copy it in first)")
    check_bundle(path)
    previous = latest_name(models_dir)
    write_text_atomic(models_dir / POINTER, path.name + "\n")
    return previous, path.name
