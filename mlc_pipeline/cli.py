"""The `mlc` command: one sub-command per stage; each is a thin shell over a library function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback

from .config import ConfigError, load_config
from .secrets import MissingCredentials, install_log_redaction, redact

log = logging.getLogger("mlc")


def cmd_collect(args) -> int:
    from .collect import collect
    cfg = load_config(args.config, parse_overrides(args.set))
    summary = collect(cfg, progress=not args.no_progress)
    print(json.dumps(summary.__dict__, indent=2, default=str))
    return 0


def cmd_curate(args) -> int:
    from .curate import curate
    summary = curate(load_config(args.config, parse_overrides(args.set)))
    print(json.dumps(summary.__dict__, indent=2, default=str))
    return 0


def cmd_build(args) -> int:
    from .dataset import build_dataset
    res = build_dataset(load_config(args.config, parse_overrides(args.set)))
    state = "published" if res.published else "unchanged (identical to the latest version; not published again)"
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
    from .models import train_alternatives, train_version
    from .modelreport import per_class_markdown, pct
    cfg = load_config(args.config, parse_overrides(args.set))
    res = train_version(cfg, dataset_dir(cfg, args.version))
    test = res.metrics["test"]
    print(f"model bundle: {res.bundle_dir}\n" + per_class_markdown(test) +
          f"macro F1 {test['macro_f1']:.3f}; unknown accepted: test other {pct(test['unknown_accepted'])}, "
          f"probe {pct(test['probe_accepted'])}")
    if args.alternatives:
        from .evaluate import compare_table
        alts = train_alternatives(cfg, dataset_dir(cfg, args.version))
        print(compare_table([(res.variant, test)] + [(k, v["test"]) for k, v in alts.items()]))
    return 0


def cmd_mine(args) -> int:
    from .mine import mine_round
    from .models import latest_model
    cfg = load_config(args.config, parse_overrides(args.set))
    bundle = args.model or latest_model(cfg)
    if bundle is None:
        raise ConfigError("no model yet: run `mlc train` first (or pass --model BUNDLE)")
    res = mine_round(cfg, bundle, args.round)
    print(f"round {res.round}: scored {res.scored} pool images, {res.added} hard negatives added "
          f"(next `mlc build` includes them); {len(res.review)} class images listed for review in {bundle}/review.csv")
    return 0


def cmd_predict(args) -> int:
    from .predict import BundleError, load_bundle, predict_paths
    try:
        bundle = load_bundle(args.bundle)
    except BundleError as exc:
        print(f"mlc: {exc}", file=sys.stderr)
        return 2
    preds = predict_paths(bundle, args.images)
    if args.json:
        print(json.dumps([p.__dict__ for p in preds], indent=2, default=str))
        return 0
    for p in preds:
        if p.error:
            print(f"{p.path}: error: {p.error}")
        elif p.none_of:
            print(f"{p.path}: none of: {', '.join(bundle.classes)}")
        else:
            print(f"{p.path}: " + ", ".join(f"{c} ({prob:.2f})" for c, prob in p.labels))
    return 0


def cmd_run(args) -> int:
    from .pipeline import run_pipeline
    from .modelreport import rounds_markdown
    cfg = load_config(args.config, parse_overrides(args.set))
    res = run_pipeline(cfg, progress=not args.no_progress)
    print(rounds_markdown(res))
    print(f"stage seconds: {res.seconds}\nreport: {res.report}")
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
    from .report import inspect_main
    return inspect_main(load_config(args.config, parse_overrides(args.set)), args)


def add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, help="pipeline YAML config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlc", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("collect", help="search the source and download images into the catalog")
    add_config(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("curate", help="verify, hash, quarantine and deduplicate what was collected")
    add_config(p)
    p.set_defaults(func=cmd_curate)

    p = sub.add_parser("build", help="publish the curated images as a new dataset version")
    add_config(p)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("train", help="train the multi-label model on a dataset version")
    add_config(p)
    p.add_argument("--version", help="dataset version (default: latest)")
    p.add_argument("--alternatives", action="store_true", help="also train the comparison heads")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("mine", help="move pool images the model wrongly accepts into the negatives")
    add_config(p)
    p.add_argument("--model", help="model bundle (default: data/models/LATEST)")
    p.add_argument("--round", type=int, default=1)
    p.set_defaults(func=cmd_mine)

    p = sub.add_parser("predict", help="which classes an image shows, or none of them")
    p.add_argument("bundle", help="model bundle folder")
    p.add_argument("images", nargs="+")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("run", help="the whole job in-process: collect, curate, build, train, mine, retrain, report")
    add_config(p)
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

    p = sub.add_parser("inspect", help="what is in the catalog and the datasets")
    add_config(p)
    p.add_argument("--version", help="dataset version to inspect (default: latest)")
    p.add_argument("--html", help="write a self-contained HTML report to this path")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_inspect)
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
    try:
        return args.func(args)
    except (ConfigError, MissingCredentials) as exc:
        print(f"mlc: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mlc: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # the last line of defence: secrets masked, traceback only for bugs
        from .flickr_source import SourceError
        if not isinstance(exc, SourceError):
            print(redact(traceback.format_exc()), file=sys.stderr)
        print(f"mlc: {type(exc).__name__}: {redact(str(exc))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
