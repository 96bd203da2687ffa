"""`mlc withdraw vN`: take a published dataset version out of use for good (it holds a photo taken
down, or was built from a bad config), on a local data root or an object store.

The folder goes whole and its name stays taken (withdrawal.py: the ledgers, `latest`); on an object
store the store's copy is withdrawn first (a tombstone, storeversions.py), then this cache's, and
every other cache drops its copy at its next fetch or publish. What was made from the version is
not touched, only listed: exports under <data_dir>/exports/ here, and every model bundle that learned
from it, here and in the store (commands.models_of_version, model/learned.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mlc_pipeline.config import Config, ConfigError
from mlc_pipeline.locking import data_root_lock
from mlc_pipeline.manifest import read_export_markers, resolve_version, versions, withdrawal, withdrawn_versions
from mlc_pipeline.objectstore import store_errors, store_of
from mlc_pipeline.storeversions import drop_withdrawn, remote_versions, remote_withdrawn, withdraw_in_store
from mlc_pipeline.withdrawal import withdraw_folder


@dataclass
class WithdrawResult:
    version: str
    files_deleted: int                  # from this data root (or cache)
    store_objects_deleted: int | None   # from the object store; None for a local data root
    already: bool                       # withdrawn before: this run only finished what was left
    latest: str | None                  # what `latest` names now (on an object store: the store's newest left)
    reason: str = ""
    exports: list[str] = field(default_factory=list)    # exports of it under <data_dir>/exports/

    def lines(self, cfg: Config) -> list[str]:
        """What `mlc withdraw` prints of the version and its exports (the model bundles that learned from
        it: commands.models_of_version)."""
        store = (f"; {self.store_objects_deleted} object(s) deleted from {cfg.data_url} (other caches drop "
                 f"their copies at their next fetch)" if self.store_objects_deleted is not None else "")
        out = [f"dataset {cfg.build.name} {self.version}: {'already withdrawn' if self.already else 'withdrawn'} "
               f"({self.reason}); {self.files_deleted} file(s) deleted here{store}; its name is never given to "
               f"another version; latest is now {self.latest or 'none (no version left: run `mlc build`)'}"]
        if self.exports:
            out.append(f"exports of it under {cfg.data_dir / 'exports'} (kept: delete them): {', '.join(self.exports)}")
        return out


def withdraw_version(cfg: Config, version: str, reason: str, wait: bool = True) -> WithdrawResult:
    reason = " ".join(reason.split())
    if not reason:
        raise ConfigError("--reason is empty: say why the version is withdrawn (it is kept in datasets/"
                          f"{cfg.build.name}/WITHDRAWN)")
    if not re.fullmatch(r"v\d+", version):
        raise ConfigError(f"name the version to withdraw as vN (not {version!r}): a withdrawal cannot be undone")
    root = cfg.layout.datasets
    with data_root_lock(cfg.data_dir, "mlc withdraw", wait=wait):
        store, in_store, published = store_of(cfg), None, None
        if store is not None:
            with store_errors(store):
                store.check()
                drop_withdrawn(store, cfg)          # what other machines withdrew, first
                published = remote_versions(store, cfg)
                known = set(published) | set(remote_withdrawn(store, cfg))
                if version in known:
                    in_store = withdraw_in_store(store, cfg, version, reason)
        before = withdrawal(root, version)
        if version not in versions(root) and before is None and in_store is None:
            resolve_version(root, version)          # the one answer to a wrong name: UnknownVersion
        files = withdraw_folder(root, version, reason)
        latest = (root / "LATEST").read_text().strip() if (root / "LATEST").is_file() else None
        if left := [v for v in published or [] if v != version]:
            latest = left[-1]       # the store's newest version left, fetched here or not (the cache's LATEST said none)
        recorded = withdrawn_versions(root)[version]["reason"]      # a rerun's own reason is not the record's
    return WithdrawResult(version, files, in_store if store is not None else None,
                          before is not None and files == 0 and not in_store, latest, recorded, exports_of(cfg, version))


def exports_of(cfg: Config, version: str) -> list[str]:
    """The exports of `version` under <data_dir>/exports/ (`mlc export`'s default place); a damaged
    marker is skipped, named in a warning."""
    return [str(folder) for folder, info in read_export_markers(cfg.data_dir / "exports").items()
            if info.get("dataset") == cfg.build.name and info.get("version") == version]
