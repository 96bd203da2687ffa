"""The `mlc` sub-commands, one function each: a thin shell over a library function that prints what
it did. Parsing, logging and turning errors into one-line messages is cli.py's job."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path

from mlc_pipeline.config import ConfigError, load_config, parse_overrides
from mlc_pipeline.dataset.verify import VersionDamaged
from mlc_pipeline.manifest import UnknownVersion, requested_version

log = logging.getLogger("mlc")
NEW_ROOT_HINT = "; an `mlc run` started on it a moment ago makes it once its checks pass: rerun this then"


@contextlib.contextmanager
def writing(cfg, args, version: str | None = None, sync_as: str | None = None, new_root: bool = False):
    """The data root's write lock for this command: wait for another writer, or fail with --no-wait.
    On an object-store data root, what the command reads is fetched into the cache first and what it
    wrote is published after it (sync.py; `sync_as`: another entry of sync.PULLS than the command's).
    Only collect and run start a data root (`new_root`); the others refuse one with no catalog."""
    from mlc_pipeline.locking import data_root_lock, lock_is_held
    from mlc_pipeline.sync import synced
    if not new_root and cfg.data_url is None and not lock_is_held(cfg.data_dir):
        require_catalog(cfg, args.config)     # before the lock, which would create the data root
    if new_root and not cfg.data_dir.exists():     # and what would stop the collect at its start
        from mlc_pipeline.collect.sources import check_before_writing
        check_before_writing(cfg)
    with data_root_lock(cfg.data_dir, f"mlc {args.command}", wait=not args.no_wait), \
            synced(cfg, sync_as or args.command, version):
        if not new_root:     # what the holder we waited for left (a first collect creates the catalog),
            require_catalog(cfg, args.config)     # or an object-store root's fetched catalog
        yield


def require_catalog(cfg, config: str) -> None:
    """A data root with no catalog is a mistyped data_dir more likely than an empty project: one line,
    rather than a fresh empty catalog reported on as if it were the project's. (A PostgreSQL catalog
    is a database, not a file here: it is not checked.)"""
    from mlc_pipeline.catalog import catalog_exists
    if catalog_exists(cfg.catalog_path):
        return
    where = f"{cfg.data_url} (cached in {cfg.data_dir})" if cfg.data_url else f"data_dir {cfg.data_dir}"
    # No folder: a typo, or a new root whose `mlc run` still checks its settings (torch) before its lock
    starting = "" if cfg.data_url or cfg.data_dir.exists() else NEW_ROOT_HINT      # (the concurrency28 audit)
    raise ConfigError(f"no catalog at {cfg.layout.catalog}: nothing was collected into {where} yet "
                      f"(check data_dir in {config}, or run `mlc collect`{starting})")


def cmd_collect(args) -> int:
    from mlc_pipeline.collect.stage import collect
    cfg = load_config(args.config, parse_overrides(args.set))
    with writing(cfg, args, new_root=True):
        summary = collect(cfg, progress=not args.no_progress, retry_failed=args.retry_failed)
    print(json.dumps(summary.__dict__, indent=2, default=str))
    return 0


def cmd_curate(args) -> int:
    from mlc_pipeline.curate.stage import curate
    cfg = load_config(args.config, parse_overrides(args.set))
    with writing(cfg, args):
        summary = curate(cfg)
    print(json.dumps(summary.__dict__, indent=2, default=str))
    return 0


def cmd_build(args) -> int:
    from mlc_pipeline.dataset.build import build_dataset
    cfg = load_config(args.config, parse_overrides(args.set))
    with writing(cfg, args):
        res = build_dataset(cfg, repair=args.repair)
    state = ("published" if res.published else
             "unchanged (identical to the latest version, its files verified; not built again)")
    print(f"dataset {res.name} {res.version}: {state}\n  {res.path}\n  {res.counts['images']} images")
    if res.skipped:
        # On an object-store root such a file may just not be published yet: the catalog is left alone
        then = "the next collect downloads them again" if cfg.data_url is None else "not in this cache (yet)"
        print(f"  left out (file gone or unreadable; {then}): " +
              ", ".join(f"{reason} {n}" for reason, n in sorted(res.skipped.items())))
    if res.not_allowed:     # narrowed since they were collected: widening the setting brings them back
        print("  left out (licence not in source.licenses; the catalog keeps them): " +
              ", ".join(f"{licence} {n}" for licence, n in sorted(res.not_allowed.items())))
    if res.published:
        from mlc_pipeline.report.inspect import dataset_summary
        diff = dataset_summary(cfg, res.version)["diff"]
        if diff is not None:
            print("  changes since the previous version: " + ("; ".join(
                f"{label} " + ", ".join(f"{k} {n}" for k, n in c.items()) for label, c in diff.items()) or "none"))
    return 0


def cmd_review(args) -> int:
    from mlc_pipeline.review.server import serve
    cfg = load_config(args.config, parse_overrides(args.set))
    return serve(cfg, host=args.host, port=args.port)


def cmd_export(args) -> int:
    from mlc_pipeline.dataset.export import ExportError, export_version, store_source, version_folder
    from mlc_pipeline.dataset.takedowns import read_takedowns
    from mlc_pipeline.sync import pull_for_reading
    cfg = load_config(args.config, parse_overrides(args.set)) if args.config else None
    try:
        if cfg:
            pull_for_reading(cfg, requested_version(args.version))
        # a path through the `latest` link names the version it points at (the export's name, its message)
        version_dir = version_folder(args.version, cfg.layout.datasets if cfg else None).resolve()
        out = Path(args.out) if args.out else ((cfg.data_dir / "exports" if cfg else Path.cwd()) /
                                              f"{version_dir.parent.name}-{version_dir.name}-{args.format}")
        res = export_version(version_dir, args.format, out, args.force, args.shard_size,
                             read_takedowns(cfg) if cfg else None, store_source(cfg, version_dir))
    except (ExportError, UnknownVersion) as exc:
        print(f"mlc export: {exc}", file=sys.stderr)
        return 2
    print(f"exported {version_dir.parent.name} {version_dir.name} as {res.format}: {res.images} images "
          f"({res.files} files) in {res.path}")
    if note := res.takedown_note():
        print(note, file=sys.stderr)
    return 0


def cmd_run(args) -> int:
    from mlc_pipeline.pipeline import Stages, run_stages
    from mlc_pipeline.report.rounds import mining_text, rounds_markdown
    from mlc_pipeline.model.options import check_train_settings
    cfg = load_config(args.config, parse_overrides(args.set))
    check_train_settings(cfg)         # before waiting for the lock, and before collecting
    with writing(cfg, args, new_root=True):     # the lock run_pipeline takes, and its check done above:
        res = run_stages(cfg, Stages(not args.no_progress))    # not twice (it builds a named network)
    print(rounds_markdown(res) + mining_text(res))      # the table's negatives added, and the held
    from mlc_pipeline.report.model import data_warnings, upgrade_lines
    print("".join(line + "\n" for line in upgrade_lines(res)), end="")     # a migration, JPEGs inspected again
    if res.not_shipped:
        print(f"not shipped: {res.not_shipped}")
    from mlc_pipeline.model.stage import models_root
    print("\n".join(data_warnings(res, models_root(cfg))) or "every set has its count of usable images")
    print(f"stage seconds: {res.seconds}\nreport: {res.report}")
    return 0


def cmd_remove(args) -> int:
    from functools import partial
    from mlc_pipeline.curate.takedown import exports_with, merged, remove_photos, takedown_selector
    cfg = load_config(args.config, parse_overrides(args.set))
    unread = None
    try:
        takedown_selector(args.reason, args.photo_id, args.owner, args.query, args.source)   # before the lock
        named = dict(photo_id=args.photo_id, owner=args.owner, query=args.query, source=args.source)
        remove = partial(remove_photos, cfg, args.reason, **named, wait=not args.no_wait)
        if cfg.data_url is None:
            require_catalog(cfg, args.config)
            res = remove()      # the files lock only: a run's training (hours) is not waited for
        else:                   # an object-store root: fetched, and the taken-down objects deleted there too
            from mlc_pipeline.locking import data_root_lock
            from mlc_pipeline.sync import pull_for_takedown, versions_holding
            with data_root_lock(cfg.data_dir, "mlc remove", wait=not args.no_wait):
                with writing(cfg, args):
                    pull_for_takedown(cfg, named)
                    res = remove(versions_holding=partial(versions_holding, cfg))
                if res.removed or res.already_removed:      # published: what the store's models learned
                    unread = store_models_read(cfg)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if not res.removed and not res.already_removed:
        print("mlc: no candidate in the catalog matches; nothing removed", file=sys.stderr)
        return 2
    print(f"removed {len(res.removed)} photo(s) (reason: {args.reason.strip()}); {len(res.files_deleted)} file(s) "
          f"deleted from raw/ and the quarantine" +
          (f"; {len(res.already_removed)} already removed" if res.already_removed else ""))
    for r in res.removed:
        print(f"  {r['source']}:{r['photo_id']}  owner {r['owner_name'] or r['owner'] or '?'}  was {r['status']}")
    if res.copies:
        print("byte copies of them (the same file under another id), taken down too: " + ", ".join(
            f"{r['source']}:{r['photo_id']} ({'earlier' if r['status'] == 'removed' else 'was ' + r['status']})"
            for r in res.copies))
    earlier = [r for r in res.holds if r["id"] not in {h["id"] for h in res.held}]
    for rows, what in ((res.held, f"held {len(res.held)} near duplicate(s) of the photos taken down for review"),
                       (earlier, f"still held for them (held earlier, {len(earlier)})")):
        if rows:
            print(f"{what}: " + ", ".join(f"{r['source']}:{r['photo_id']}" for r in rows) + " (undo in `mlc review` if not)")
    rebuild = "rebuild with `mlc build`, or `mlc withdraw` them"
    for found, what in ((res.published_in, f"still contain them ({rebuild})"),
                        (res.copies_in, f"hold their byte copies (taken down, the same file; {rebuild})"),
                        (res.held_in, f"hold the copies held (the same pictures; {rebuild})")):
        if found:
            print(f"published versions that {what}:", *(f"  {v}: {listed(ids)}" for v, ids in found.items()), sep="\n")
    if not (res.published_in or res.copies_in or res.held_in):
        print("no published version contains them")
    if exports := exports_with(cfg, merged(merged(res.published_in, res.copies_in), res.held_in)):
        print(f"exports under {cfg.data_dir / 'exports'} that hold them (export the version again, or delete them; "
              f"exports elsewhere (--out) are not tracked):")
        print(*(f"  {folder}: {listed(ids)}" for folder, ids in exports.items()), sep="\n")
    if models := models_with(cfg, args.config, res, unread):
        print(*models, sep="\n")
    return 0


def store_models_read(cfg, manifests: bool = True) -> str | None:
    """On an object-store root, after the takedown's publish or the withdrawal (under the write lock
    still): what tells which of the store's bundles learned the photos or the version, fetched
    (storemodels.pull_learning: their bundle.json, and the versions' manifests unless `manifests` is
    False, never their weights); None, else why the store could not be read (the takedown or withdrawal
    stands; `learned_lines` says the check is incomplete)."""
    from mlc_pipeline.objectstore import ObjectStoreError
    from mlc_pipeline.secrets import redact
    from mlc_pipeline.storemodels import pull_learning
    try:
        pull_learning(cfg, manifests)
    except ObjectStoreError as exc:
        log.warning("the store's model bundles could not all be read: %s", exc)
        return redact(str(exc))
    return None


def models_with(cfg, config: str, res, unread: str | None = None) -> list[str]:
    """`mlc remove`'s lines on the model bundles that learned from the photos taken down or held
    (model/learned.py: a model's training, and those it continued, less what it left out): on an
    object-store root every bundle the store publishes too, from its bundle.json and the manifests
    (`store_models_read`; `unread`: why they could not be read, said as a check incomplete); LATEST
    said, with the command that trains a model without them."""
    from mlc_pipeline.model.learned import bundles_that_learned
    from mlc_pipeline.model.registry import list_bundles
    bundles = list_bundles(cfg.layout.models, stored=cfg.data_url is not None)
    found, unknown = bundles_that_learned(cfg, {(r["source"], r["photo_id"]) for r in res.photos + res.holds}, bundles)
    named, gaps, latest = learned_lines(cfg, bundles, {n: listed(ids) for n, ids in found.items()}, unknown, unread,
                                        "the takedown itself is done and published", "remove")
    pointer = latest_pointer(cfg)
    retrain = f"`mlc build -c {config}`, then `mlc train -c {config}`"
    out = [f"model bundles that learned from them (kept; a model without them: {retrain}; or delete them):"] * bool(named)
    out += named + gaps
    if latest in unknown:       # counted as having learned them: neither reused nor kept by `mlc run`
        out.append(f"{pointer} ({latest}) cannot tell whether it learned from them, and counts as if it did: "
                   f"`mlc run` trains round 0 anew and ships it over it without a comparison")
    if latest in found:
        out.append(f"{pointer} is one of them: `mlc predict` and `mlc mine` use it until a model trained without "
                   "them replaces it (the commands above, or `mlc run`)")
    return out


def learned_lines(cfg, bundles, found: dict[str, str], unknown: dict[str, str], unread: str | None, done: str,
                  command: str) -> tuple[list[str], list[str], str | None]:
    """What `mlc remove` and `mlc withdraw` say of the model bundles that learned from what they took out
    of use: (a line a bundle of `found` (name -> what it learned), "  NAME (in the store, the store's
    LATEST): ..."; the lines on what was not checked: `unknown`'s bundles, the store unread (`unread`,
    `done`: what stands all the same, `command`: the command to run again); the name LATEST names, None
    when the store was unread: the cache's copy of its pointer may be stale, and is not told as the store's)."""
    from mlc_pipeline.layout import MODEL_LISTINGS
    latest = None if unread else next((b.name for b in bundles if b.latest), None)
    in_store = {b.name for b in bundles if b.path.parent.name == MODEL_LISTINGS}
    pointer = latest_pointer(cfg)
    tags = {n: ", ".join(["in the store"] * (n in in_store) + [pointer] * (n == latest)) for n in found}
    named = [f"  {n}{f' ({tags[n]})' if tags[n] else ''}: {what}" for n, what in found.items()]
    gaps = []
    if unknown:
        whys = list(unknown.values())
        gaps.append(f"model bundles not checked ({len(unknown)}): {'; '.join(whys[:3])}{' ...' * (len(whys) > 3)}")
    if unread:
        gaps.append(f"the store's model bundles were NOT all checked, the check is incomplete ({unread}): {done}; "
                    f"run the same `mlc {command}` again to check them")
    return named, gaps, latest


def latest_pointer(cfg) -> str:
    "What names the product model: the store's pointer on an object-store root, else models/LATEST."
    return "the store's LATEST" if cfg.data_url is not None else "models/LATEST"


def listed(ids: list[str]) -> str:
    "Photo ids as `mlc remove` lists them: a count, then the first ten."
    return f"{len(ids)} photo(s): {', '.join(ids[:10])}{' ...' if len(ids) > 10 else ''}"


def cmd_withdraw(args) -> int:
    """On an object-store root the store's bundles are read after the withdrawal, under its write lock
    still (their bundle.json into the cache's models/.listings/); a store that cannot be read then is
    said as a check incomplete, the withdrawal done."""
    from mlc_pipeline.dataset.withdraw import withdraw_version
    from mlc_pipeline.locking import data_root_lock
    cfg = load_config(args.config, parse_overrides(args.set))
    stored = cfg.data_url is not None
    with data_root_lock(cfg.data_dir, "mlc withdraw", wait=not args.no_wait) if stored else contextlib.nullcontext():
        res = withdraw_version(cfg, args.version, args.reason, wait=not args.no_wait)
        unread = store_models_read(cfg, manifests=False) if stored else None
    print("\n".join(res.lines(cfg) + models_of_version(cfg, f"{cfg.build.name}/{res.version}", unread)))
    return 0


def models_of_version(cfg, dataset_version: str, unread: str | None) -> list[str]:
    """`mlc withdraw`'s lines on the model bundles whose network learned from the version withdrawn
    (model/learned.py: trained on it, or continued, directly or through its ancestors, a network trained
    on it): on an object-store root every bundle the store publishes too (`store_models_read`; `unread`:
    why they could not be read); LATEST said."""
    from mlc_pipeline.model.learned import bundles_that_learned_version
    from mlc_pipeline.model.registry import list_bundles
    bundles = list_bundles(cfg.layout.models, stored=cfg.data_url is not None)
    found, unknown = bundles_that_learned_version(cfg, dataset_version, bundles)
    named, gaps, latest = learned_lines(cfg, bundles, found, unknown, unread, "the withdrawal itself is done", "withdraw")
    out = ["model bundles that learned from it (kept: retrain, or delete them):"] * bool(named) + named + gaps
    if latest in found:
        out.append(f"{latest_pointer(cfg)} is one of them: `mlc predict` and `mlc mine` use it until another model "
                   "replaces it")
    return out


def cmd_serve_flickr(args) -> int:
    from mlc_pipeline.flickr_server import serve_main
    return serve_main(args.rest)


def cmd_inspect(args) -> int:
    """Read-only (no lock). The version shown is verified too: a damaged one is reported after the
    summary, as one line, with exit code 3."""
    from mlc_pipeline.dataset.verify import verify_version
    from mlc_pipeline.manifest import latest_version, resolve_version
    from mlc_pipeline.report.inspect import inspect_main
    from mlc_pipeline.sync import pull_for_reading
    cfg = load_config(args.config, parse_overrides(args.set))
    pull_for_reading(cfg, requested_version(args.version), html=bool(args.html))
    require_catalog(cfg, args.config)       # say so, rather than report an empty project
    root = cfg.layout.datasets
    # Named: it must exist (UnknownVersion otherwise); not named: the latest, or none built yet.
    version = args.version = resolve_version(root, args.version) if args.version or latest_version(root) else None
    damage = None
    if version:
        try:
            verify_version(root / version)
        except VersionDamaged as exc:
            damage = args.damage = exc      # the reports say so too (a report read later looked sound)
            if not all((root / version / name).exists() for name in ("manifest.csv", "dataset.json")):
                raise                       # nothing to summarise
    rc = inspect_main(cfg, args)
    if damage:
        raise damage
    return rc
