"""`mlc models`: the bundles of a data root as a table, and two bundles side by side."""

from __future__ import annotations

from pathlib import Path

from mlc_pipeline.model.registry import BundleInfo, RegistryError, read_info, settings_of
from mlc_pipeline.report.model import network_line
from mlc_pipeline.report.tables import compare_table, pct


def metric(test: dict, key: str) -> str:
    value = test.get(key)
    if value is None:
        return "n/a"
    return f"{value:.3f}" if key == "macro_f1" else pct(value)


def network(info: BundleInfo) -> str:
    if info.problem:            # what promote refuses: predict and mining cannot load it either
        return f"UNUSABLE: {info.problem}"
    line = network_line(info.meta).split(";")[0]      # the network and its weights; not why auto chose it
    # usable (predict and mining load it), but how it did on its test split is unknown
    return f"{line} (no test metrics: {info.metrics_problem})" if info.metrics_problem else line


def cap(meta: dict) -> str:
    """The `train.max_unknown_accepted` a bundle was calibrated at: what tells bundles trained at
    different operating points apart. 'none' trained without a cap; 'n/a' before the setting; '(not
    applied)' when training could not apply it (a softmax head; no 'other' image in validation)."""
    config = meta.get("config") or {}
    if "max_unknown_accepted" not in config:
        return "n/a"
    value = config["max_unknown_accepted"]
    if value is None:
        return "none"
    unapplied = meta.get("head") == "softmax" or any(
        w.startswith(f"train.max_unknown_accepted {value:g} was not applied") for w in meta.get("warnings") or [])
    return f"{value:g} (not applied)" if unapplied else f"{value:g}"


def bundles_table(infos: list[BundleInfo]) -> str:
    lines = ["| | bundle | dataset | created | macro F1 | unknown accepted (test other) | unknown accepted (probe) "
             "| max_unknown_accepted | head | network |", "|---|---|---|---|---|---|---|---|---|---|"]
    for i in infos:
        lines.append(f"| {'LATEST' if i.latest else ''} | {i.name} | {i.dataset_version} | {i.created_at} "
                     f"| {metric(i.test, 'macro_f1')} | {metric(i.test, 'unknown_accepted')} "
                     f"| {metric(i.test, 'probe_accepted')} | {cap(i.meta)} | {i.head} | {network(i)} |")
    return "\n".join(lines) + "\n"


def compare(a: Path, b: Path) -> str:
    """Test metrics side by side, per-class F1, then the settings that differ."""
    infos = [read_info(a), read_info(b)]
    for i in infos:
        if not i.test:
            raise RegistryError(f"{i.path}: no test metrics to compare "
                                f"({i.problem or i.metrics_problem or 'metrics.json has no test'})")
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
