"""The `mlc` sub-commands about models, one function each (train, mine, predict, models, promote,
weights): a thin shell over the model package, as commands.py is for the data stages. Parsing,
logging and turning errors into one-line messages is cli.py's job."""

from __future__ import annotations

import sys
from pathlib import Path

from mlc_pipeline.commands import writing
from mlc_pipeline.config import ConfigError, load_config, parse_overrides
from mlc_pipeline.manifest import requested_version, resolve_version


def check_bundle_path(cfg, option: str, spec: str | None) -> None:
    """Before the lock and torch: a bundle given as a path must be a bundle folder. Names and `latest`
    are resolved by bundle_option once the lock is held and an object-store root is pulled."""
    if spec and spec != "latest" and ("/" in spec or Path(spec).is_dir()):
        require_bundle_json(cfg, option, spec, Path(spec))


def bundle_option(cfg, option: str, spec: str | None) -> Path | None:
    """A bundle named on the command line (a folder, a name under the models folder, or latest);
    None when the option was not given."""
    if not spec:
        return None
    from mlc_pipeline.model.registry import RegistryError, resolve_bundle
    try:
        bundle = resolve_bundle(spec, cfg.layout.models)
    except RegistryError as exc:
        raise ConfigError(f"{option} {spec}: not a model bundle ({exc})") from None
    require_bundle_json(cfg, option, spec, bundle)
    return bundle


def require_bundle_json(cfg, option: str, spec: str, bundle: Path) -> None:
    if not (bundle / "bundle.json").is_file():
        raise ConfigError(f"{option} {spec}: not a model bundle (no bundle.json in {bundle}); "
                          f"bundles are under {cfg.layout.models}")


def cmd_train(args) -> int:
    cfg = load_config(args.config, parse_overrides(args.set))
    check_bundle_path(cfg, "--continue", args.continue_from)
    if args.continue_from:       # asked for by name: continue whatever mine.retrain says (still checked)
        cfg = cfg.model_copy(update={"mine": cfg.mine.model_copy(update={"retrain": "continue"})})
    # --continue on an object-store root also needs the latest model and every version (its ancestry)
    with writing(cfg, args, requested_version(args.version),
                 sync_as="train-continue" if args.continue_from else None):
        previous = bundle_option(cfg, "--continue", args.continue_from)
        from mlc_pipeline.dataset.verify import verify_version
        version_dir = cfg.layout.datasets / resolve_version(cfg.layout.datasets, args.version)  # wrong name, damaged: one line,
        verify_version(version_dir)                        # before torch loads
        from mlc_pipeline.model.options import check_train_settings
        # A wrong option or weights file: one line, before training. (It loads torch: after the lock,
        # so that --no-wait answers at once.) A continuation trains the bundle's network, not `pretrained`.
        check_train_settings(cfg, weights=not args.continue_from)
        from mlc_pipeline.model.stage import train_alternatives, train_version
        from mlc_pipeline.report.model import bundle_network_line, per_class_markdown
        from mlc_pipeline.report.tables import pct
        from mlc_pipeline.model.learned import taken_down_learned
        taken_down = taken_down_learned(cfg, Path(previous)) if previous else None     # asked once, here
        res = train_version(cfg, version_dir, previous=previous, previous_taken_down=taken_down)
        test = res.metrics["test"]
        print(f"model bundle: {res.bundle_dir}\nnetwork: {bundle_network_line(res.bundle_dir)}\n" +
              per_class_markdown(test) +
              f"macro F1 {test['macro_f1']:.3f}; unknown accepted: test other {pct(test['unknown_accepted'])}, "
              f"probe {pct(test['probe_accepted'])}")
        if args.alternatives:
            from mlc_pipeline.report.tables import compare_table
            alts = train_alternatives(cfg, version_dir)
            print(compare_table([(res.variant, test)] + [(k, v["test"]) for k, v in alts.items()]))
    return 0


def cmd_mine(args) -> int:
    from mlc_pipeline.model.mine_record import check_round
    check_round(args.round, undo=args.undo)     # before the config, the lock and torch: one line, exit 2
    cfg = load_config(args.config, parse_overrides(args.set))
    check_bundle_path(cfg, "--model", args.model)     # before the lock and torch
    if not args.undo and cfg.mine.pool is None:    # nothing to score: leave the bundle's files alone
        raise ConfigError("mine.pool is not configured: there is no pool to mine; nothing was changed "
                          "(add mine.pool to the config, then `mlc collect` and `mlc curate`)")
    from mlc_pipeline.catalog import catalog_exists
    if args.undo and args.round is None and cfg.data_url is None and catalog_exists(cfg.catalog_path):
        refuse_undo_without_round(cfg)        # a catalog here is read without waiting for a writer's lock
    with writing(cfg, args):          # before importing torch: --no-wait answers at once
        if args.undo and args.round is None:    # an object-store root: once its catalog was fetched
            refuse_undo_without_round(cfg)      # (or a new root, once the collect we waited for made it)
        chosen = None if args.undo else bundle_option(cfg, "--model", args.model)   # pulled; before torch
        from mlc_pipeline.model.mine import mine_round, undo_round
        if args.undo:
            changed = undo_round(cfg, args.round, args.photo_id or None)
            print(f"round {args.round}: {changed} mined or held pool images put back into the pool "
                  f"(the next `mlc build` leaves them out)")
            return 0
        from mlc_pipeline.model.registry import latest_name, resolve_bundle
        if chosen is None and latest_name(cfg.layout.models) is None:
            raise ConfigError("no model yet: run `mlc train` first (or pass --model BUNDLE)")
        bundle = chosen or resolve_bundle("latest", cfg.layout.models)   # a LATEST naming a folder that is gone
        res = mine_round(cfg, bundle, args.round)      # None: the round after the catalog's last
    print(f"round {res.round}: scored {res.scored} pool images, {res.added} hard negatives added "
          f"(next `mlc build` includes them), {len(res.held)} held for review, {res.over_cap} over the round's cap; "
          f"every decision with its score in {bundle}/mined.csv{res.undo_hint(args.config, args.set)}; "
          f"{len(res.review)} class images listed for review in {bundle}/review.csv")
    return 0


def refuse_undo_without_round(cfg) -> None:
    """Which round's decisions to reverse is never a default: name the rounds there are to put back."""
    from mlc_pipeline.catalog import Catalog
    with Catalog(cfg.catalog_path, readonly=True) as catalog:
        rounds = catalog.mined_rounds()
    raise ConfigError("mine --undo: name the round to put back with --round N (" + (
        f"rounds with mined or held images: {', '.join(map(str, rounds))})" if rounds else
        "no round has mined or held images: nothing to undo)"))


def models_dir_of(args, fetch: list[str] | None = (), compared: bool = False) -> Path:
    """-c CONFIG's models folder (an object store's bundles `fetch` names fetched first; `compared`:
    what `--compare` reads of them alone), or ./data/models."""
    from mlc_pipeline.sync import registry_of
    cfg = load_config(args.config, parse_overrides(args.set)) if getattr(args, "config", None) else None
    return registry_of(cfg, f"mlc {args.command}", fetch, compared)


def cmd_predict(args) -> int:
    from mlc_pipeline.model.predict_cli import run_predict
    if args.model:
        bundle, inputs = args.model, args.inputs
    elif len(args.inputs) < 2:
        raise ConfigError("give the model and the images: `mlc predict --model BUNDLE|latest IMAGE...` "
                          "(or the older `mlc predict BUNDLE IMAGE...`)")
    else:
        bundle, inputs = args.inputs[0], args.inputs[1:]
    ignored = [item for item in args.set or [] if item.partition("=")[0].startswith(("train.", "mine."))]
    if ignored:          # `--set train.max_unknown_accepted=1` was accepted and changed nothing (curve23)
        print(f"mlc predict: {', '.join(ignored)} changes nothing here: a trained model decides with its own "
              "thresholds (bundle.json); another operating point means training again (docs/training.md)",
              file=sys.stderr)
    return run_predict(bundle, inputs, models_dir_of(args, [bundle]), args.json, args.max_pixels)


def cmd_models(args) -> int:
    from mlc_pipeline.model.registry import list_bundles
    from mlc_pipeline.report.models import bundles_table, compare
    models_dir = models_dir_of(args, list(args.compare) if args.compare else None, compared=bool(args.compare))
    if args.compare:                  # RegistryError is a ConfigError: one line
        a, b = (compared_bundle(spec, models_dir) for spec in args.compare)
        print(compare(a, b), end="")
        return 0
    infos = list_bundles(models_dir, stored=True)      # on a store: those listed from their metadata too
    print(bundles_table(infos) if infos else f"no model bundles under {models_dir}\n", end="")
    return 0


def compared_bundle(spec: str, models_dir: Path) -> Path:
    """A bundle `mlc models --compare` names: the cache's, else (an object-store data root) the store's,
    from what the comparison reads of it (models/.listings/<bundle>/: storemodels.pull_compared);
    `latest` is the store's pointer there (models/.listings/LATEST), else the cache's."""
    from mlc_pipeline.layout import latest_name
    from mlc_pipeline.model.registry import RegistryError, resolve_bundle
    from mlc_pipeline.storemodels import LISTINGS
    listings = models_dir / LISTINGS
    name = latest_name(listings) if spec == "latest" else spec
    try:
        return resolve_bundle(spec if name is None else name, models_dir)
    except RegistryError:
        if name is None or "/" in name or not (listings / name / "bundle.json").is_file():
            raise
        return listings / name


def cmd_promote(args) -> int:
    from mlc_pipeline.model.registry import promote_in, promoted_under_a_writer, read_info
    cfg = load_config(args.config, parse_overrides(args.set)) if args.config else None
    where, previous, new = promote_in(cfg, args.bundle)     # an object-store root: the store's LATEST first
    print(f"{where}: {previous or '(none)'} -> {new.name}")
    if note := promoted_under_a_writer(cfg):
        print(note)
    why = read_info(new).metrics_problem
    if why:         # usable (predict, mine), but nothing says how good it is
        print(f"note: {new.name} has no test metrics ({why}): predict and mine use it; `mlc models` shows n/a "
              f"for it, `--compare` and the report's model section cannot show it")
    return 0


def cmd_weights(args) -> int:
    """Pre-fetch torchvision's ImageNet weights (for copying to machines without internet), or list the cache."""
    from mlc_pipeline.model.weights_cli import weights_command
    return weights_command(args)
