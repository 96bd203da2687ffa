"""The `mlc` command: one sub-command per stage; each is a thin shell over a library function."""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import logging
import signal
import sys
import traceback
from pathlib import Path

from .config import ConfigError, load_config
from .dataset import VersionDamaged
from .hashing import sha256_file
from .locking import DataRootBusy, ReadOnlyDataRoot
from .secrets import MissingCredentials, install_log_redaction, redact

log = logging.getLogger("mlc")
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)   # an OSError with one of these: one line, no traceback


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C, so every stage unwinds the same way: the
    queue is cancelled, what finished is recorded and the run is marked interrupted."""


def raise_terminated(signum, frame) -> None:
    raise Terminated()


def writing(cfg, args):
    """The data root's write lock for this command: wait for another writer, or fail with --no-wait."""
    from .locking import data_root_lock
    return data_root_lock(cfg.data_dir, f"mlc {args.command}", wait=not args.no_wait)


def cmd_collect(args) -> int:
    from .collect import collect
    cfg = load_config(args.config, parse_overrides(args.set))
    with writing(cfg, args):
        summary = collect(cfg, progress=not args.no_progress)
    print(json.dumps(summary.__dict__, indent=2, default=str))
    return 0


def cmd_curate(args) -> int:
    from .curate import curate
    cfg = load_config(args.config, parse_overrides(args.set))
    with writing(cfg, args):
        summary = curate(cfg)
    print(json.dumps(summary.__dict__, indent=2, default=str))
    return 0


def cmd_build(args) -> int:
    from .dataset import build_dataset
    cfg = load_config(args.config, parse_overrides(args.set))
    with writing(cfg, args):
        res = build_dataset(cfg, repair=args.repair)
    state = ("published" if res.published else
             "unchanged (identical to the latest version, its files verified; not published again)")
    print(f"dataset {res.name} {res.version}: {state}\n  {res.path}\n  {res.counts['images']} images")
    return 0


def dataset_dir(cfg, version: str | None):
    from .dataset import latest_version
    root = cfg.data_dir / "datasets" / cfg.build.name
    version = version or latest_version(root)
    if not version or not (root / version / "manifest.csv").exists():
        raise ConfigError(f"no dataset version {version or ''} under {root}: run `mlc build` first")
    return root / version


def cmd_train(args) -> int:
    cfg = load_config(args.config, parse_overrides(args.set))
    with writing(cfg, args):          # before importing torch: --no-wait answers at once
        from .dataset import verify_version
        verify_version(dataset_dir(cfg, args.version))     # a damaged version: one line, before torch loads
        from .models import train_alternatives, train_version
        from .modelreport import bundle_network_line, per_class_markdown, pct
        res = train_version(cfg, dataset_dir(cfg, args.version))
        test = res.metrics["test"]
        print(f"model bundle: {res.bundle_dir}\nnetwork: {bundle_network_line(res.bundle_dir)}\n" +
              per_class_markdown(test) +
              f"macro F1 {test['macro_f1']:.3f}; unknown accepted: test other {pct(test['unknown_accepted'])}, "
              f"probe {pct(test['probe_accepted'])}")
        if args.alternatives:
            from .evaluate import compare_table
            alts = train_alternatives(cfg, dataset_dir(cfg, args.version))
            print(compare_table([(res.variant, test)] + [(k, v["test"]) for k, v in alts.items()]))
    return 0


def cmd_mine(args) -> int:
    cfg = load_config(args.config, parse_overrides(args.set))
    with writing(cfg, args):          # before importing torch: --no-wait answers at once
        from .mine import mine_round, undo_round
        from .models import latest_model
        if args.undo:
            changed = undo_round(cfg, args.round, args.photo_id or None)
            print(f"round {args.round}: {changed} mined or held pool images put back into the pool "
                  f"(the next `mlc build` leaves them out)")
            return 0
        bundle = args.model or latest_model(cfg)
        if bundle is None:
            raise ConfigError("no model yet: run `mlc train` first (or pass --model BUNDLE)")
        res = mine_round(cfg, bundle, args.round)
    print(f"round {res.round}: scored {res.scored} pool images, {res.added} hard negatives added "
          f"(next `mlc build` includes them), {len(res.held)} held for review, {res.over_cap} over the round's cap; "
          f"every decision with its score in {bundle}/mined.csv (undo: `mlc mine --undo --round {res.round}`); "
          f"{len(res.review)} class images listed for review in {bundle}/review.csv")
    return 0


def cmd_predict(args) -> int:
    from .predict import BundleError, load_bundle, predict_paths
    try:
        bundle = load_bundle(args.bundle)
    except BundleError as exc:
        print(f"mlc: {exc}", file=sys.stderr)
        return 2
    preds = predict_paths(bundle, args.images, max_pixels=args.max_pixels)
    failed = sum(p.error is not None for p in preds)
    if args.json:
        print(json.dumps([p.__dict__ for p in preds], indent=2, default=str))
        return 1 if failed else 0
    for p in preds:
        if p.error:
            print(f"{p.path}: error: {p.error}")
        elif p.none_of:
            print(f"{p.path}: none of: {', '.join(bundle.classes)}")
        else:
            print(f"{p.path}: " + ", ".join(f"{c} ({prob:.2f})" for c, prob in p.labels))
    if failed:
        print(f"mlc: {failed} of {len(preds)} images could not be scored (listed above)", file=sys.stderr)
        return 1
    return 0


def cmd_run(args) -> int:
    from .pipeline import run_pipeline
    from .modelreport import rounds_markdown
    from .models import check_train_settings
    cfg = load_config(args.config, parse_overrides(args.set))
    check_train_settings(cfg)         # before waiting for the lock, and before collecting
    with writing(cfg, args):
        res = run_pipeline(cfg, progress=not args.no_progress)
    print(rounds_markdown(res))
    from .models import models_root
    from .modelreport import data_warnings
    print("\n".join(data_warnings(res, models_root(cfg))) or "every set has its count of usable images")
    print(f"stage seconds: {res.seconds}\nreport: {res.report}")
    return 0


def cmd_weights(args) -> int:
    """Pre-fetch torchvision's ImageNet weights (for copying to machines without internet), or list the cache."""
    from . import weights as w
    if args.action == "list":
        rows = w.cached_weights([args.arch] if args.arch else None)
        if not args.all and not args.arch:
            rows = [r for r in rows if r["cached"] or r["arch"] == w.RECIPES["pretrained"]["arch"]]
        print(f"torch hub cache: {w.hub_checkpoints_dir()}")
        for r in rows:
            print(f"{r['arch']:<22} {'cached ' if r['cached'] else 'missing'}  {r['weights']:<40} {Path(r['file']).name}")
        return 0
    arch = args.arch or w.RECIPES["pretrained"]["arch"]
    try:
        weights = w.imagenet_weights(arch)
        cached = w.cache_path(weights, args.dest)
        if cached.is_file():
            path = cached
        else:  # torch.hub announces the download on stdout; failing, one line on stderr says it all
            with contextlib.redirect_stdout(io.StringIO()):
                path = w.download(weights, args.dest, progress=True, timeout=args.timeout)
    except (ValueError, w.WeightsUnavailable) as exc:
        print(f"mlc weights fetch: {arch}: {exc}", file=sys.stderr)
        return 1
    print(f"{w.weights_name(weights)}\n{path}\nsha256 {sha256_file(path)}")
    return 0


def parse_overrides(items: list[str] | None) -> dict:
    """--set train.epochs=2 --set source.local.scale=0.2 -> nested dict (values parsed as YAML)."""
    import yaml
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=2")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def cmd_remove(args) -> int:
    from .takedown import remove_photos
    cfg = load_config(args.config, parse_overrides(args.set))
    try:
        res = remove_photos(cfg, args.reason, photo_id=args.photo_id, owner=args.owner, query=args.query)
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
    if res.published_in:
        print("published versions that still contain them (rebuild with `mlc build`, or withdraw them):")
        for version, ids in res.published_in.items():
            print(f"  {version}: {len(ids)} photo(s): {', '.join(ids[:10])}{' ...' if len(ids) > 10 else ''}")
    else:
        print("no published version contains them")
    return 0


def cmd_serve_flickr(args) -> int:
    from .flickr_server import serve_main
    return serve_main(args.rest)


def cmd_inspect(args) -> int:
    """Read-only (no lock). The version shown is verified too: a damaged one is reported after the
    summary, as one line, with exit code 3."""
    from .dataset import latest_version, verify_version
    from .report import inspect_main
    cfg = load_config(args.config, parse_overrides(args.set))
    root = cfg.data_dir / "datasets" / cfg.build.name
    version = args.version or latest_version(root)
    damage = None
    if version and (root / version / "dataset.json").exists():
        try:
            verify_version(root / version)
        except VersionDamaged as exc:
            damage = exc
            if not (root / version / "manifest.csv").exists():
                raise                       # nothing to summarise
    rc = inspect_main(cfg, args)
    if damage:
        raise damage
    return rc


def add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, help="pipeline YAML config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")


def add_writer(p: argparse.ArgumentParser) -> None:
    add_config(p)
    p.add_argument("--no-wait", action="store_true",
                   help="fail at once (exit code 75) when another command is writing to the data root")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlc", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("collect", help="search the source and download images into the catalog")
    add_writer(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("curate", help="verify, hash, quarantine and deduplicate what was collected")
    add_writer(p)
    p.set_defaults(func=cmd_curate)

    p = sub.add_parser("build", help="publish the curated images as a new dataset version")
    add_writer(p)
    p.add_argument("--repair", action="store_true",
                   help="publish a fresh version from the catalog even if the latest one's content is "
                        "unchanged (use when the latest version's files were deleted or changed)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("train", help="train the multi-label model on a dataset version")
    add_writer(p)
    p.add_argument("--version", help="dataset version (default: latest)")
    p.add_argument("--alternatives", action="store_true", help="also train the comparison heads")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("mine", help="move pool images the model wrongly accepts into the negatives")
    add_writer(p)
    p.add_argument("--model", help="model bundle (default: data/models/LATEST)")
    p.add_argument("--round", type=int, default=1)
    p.add_argument("--undo", action="store_true", help="put round ROUND's mined negatives back into the pool")
    p.add_argument("--photo-id", action="append", help="with --undo: only these photos (repeatable)")
    p.set_defaults(func=cmd_mine)

    p = sub.add_parser("predict", help="which classes an image shows, or none of them")
    p.add_argument("bundle", help="model bundle folder")
    p.add_argument("images", nargs="+")
    p.add_argument("--json", action="store_true")
    p.add_argument("--max-pixels", type=int, default=64_000_000,
                   help="refuse larger images from their header, before decoding (default: 64 MP)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("run", help="the whole job in-process: collect, curate, build, train, mine, retrain, report")
    add_writer(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("remove", help="take photos down (owner request, licence change): out of every future version")
    add_config(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--photo-id", help="the source's photo id")
    which.add_argument("--owner", help="every photo of this owner (id or name), now and later")
    which.add_argument("--query", help="every photo found by this search query")
    p.add_argument("--reason", required=True, help="why (kept in the catalog)")
    p.set_defaults(func=cmd_remove)

    p = sub.add_parser("serve-flickr", help="run the bundled Flickr-compatible server (offline world)",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="see `mlc serve-flickr --help`")
    p.set_defaults(func=cmd_serve_flickr)

    p = sub.add_parser("weights", help="pre-fetch torchvision ImageNet weights, or list what the cache holds",
                       description="fetch: download ARCH's ImageNet weights (default: arch auto's network) into the "
                                   "torch hub cache ($TORCH_HOME/hub/checkpoints) or --dest, print file and sha256; "
                                   "copy that file to a machine without internet (docs/training.md). "
                                   "list: which networks' weights the cache holds.")
    p.add_argument("action", choices=["fetch", "list"])
    p.add_argument("arch", nargs="?", help="a torchvision.models name, e.g. resnet18")
    p.add_argument("--dest", help="fetch: folder to save into (default: the torch hub cache)")
    p.add_argument("--timeout", type=float, default=30.0, help="fetch: seconds without progress before giving up")
    p.add_argument("--all", action="store_true", help="list: every torchvision network, cached or not")
    p.set_defaults(func=cmd_weights)

    p = sub.add_parser("inspect", help="what is in the catalog and the datasets")
    add_config(p)
    p.add_argument("--version", help="dataset version to inspect (default: latest)")
    p.add_argument("--html", help="write a self-contained HTML report to this path")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_inspect)

    from .catalog.cli import add_catalog_parser
    add_catalog_parser(sub, add_writer)      # mlc catalog migrate
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve-flickr"]:          # its own parser: options like --help pass straight through
        from .flickr_server import serve_main
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return serve_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("flickrapi").setLevel(logging.WARNING)   # it logs every call's parameters
    install_log_redaction()
    from .catalog import CatalogError
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        return args.func(args)
    except (ConfigError, MissingCredentials) as exc:
        print(f"mlc: {redact(str(exc))}", file=sys.stderr)
        return 2
    except DataRootBusy as exc:
        print(f"mlc: {exc}", file=sys.stderr)
        return 75                               # EX_TEMPFAIL: try again later
    except VersionDamaged as exc:
        print(f"mlc: {exc}", file=sys.stderr)
        return 3
    except Terminated:
        print("mlc: terminated (SIGTERM); rerun the same command to resume", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("mlc: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (CatalogError, ReadOnlyDataRoot) as exc:
        print(f"mlc: {redact(str(exc))}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            return last_line_of_defence(exc)
        where = f" {exc.filename}" if exc.filename else ""
        print(f"mlc: cannot write{where}: {exc.strerror} ({errno.errorcode[exc.errno]}); free space or fix the "
              f"disk, then rerun the same command", file=sys.stderr)
        return 1
    except Exception as exc:
        return last_line_of_defence(exc)


def last_line_of_defence(exc: Exception) -> int:
    """Secrets masked, a traceback only for bugs."""
    from .download import StorageError
    from .flickr_source import SourceError
    if isinstance(exc, StorageError):
        print(f"mlc: {redact(str(exc))}", file=sys.stderr)
        return 1
    if not isinstance(exc, SourceError):
        print(redact(traceback.format_exc()), file=sys.stderr)
    print(f"mlc: {type(exc).__name__}: {redact(str(exc))}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
