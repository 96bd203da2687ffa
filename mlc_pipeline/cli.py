"""The `mlc` command: one sub-command per stage (commands.py; model_commands.py for the models'), each a thin shell over a library
function. Here: the parser, logging, and the rule that an ordinary failure is one line on stderr
with an exit code, never a traceback (a traceback only for a bug)."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from mlc_pipeline import __version__, commands, interrupts, model_commands, progress
from mlc_pipeline.config import ConfigError
from mlc_pipeline.dataset.verify import VersionDamaged
from mlc_pipeline.executor import ClusterLost
from mlc_pipeline.fsutil import temp_target
from mlc_pipeline.locking import DataRootBusy, ReadOnlyDataRoot
from mlc_pipeline.manifest import UnknownVersion
from mlc_pipeline.secrets import LINES, MissingCredentials, install_log_redaction, printable, redact

DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)   # an OSError with one of these: one line, no traceback
# The object store's libraries: at DEBUG they log every request's headers (X-Amz-Security-Token, the key
# id); at INFO, which credentials they found. Warnings only, unless MLC_LIBRARY_DEBUG is set.
WIRE_LOGGERS = ("botocore", "aiobotocore", "boto3", "s3transfer", "s3fs", "fsspec", "urllib3", "aiohttp",
                "oauthlib", "requests_oauthlib")    # Flickr's signing: every request's oauth_* values (verify21)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C, so every stage unwinds the same way: the
    queue is cancelled, what finished is recorded and the run is marked interrupted."""


def raise_terminated(signum, frame) -> None:
    raise Terminated()


def add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, help="pipeline YAML config")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")


def add_writer(p: argparse.ArgumentParser) -> None:
    add_config(p)
    p.add_argument("--no-wait", action="store_true",
                   help="fail at once (exit code 75) when another command is writing to the data root")
    add_no_progress(p)


def add_no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars or summaries (they are shown only when stdout and stderr are both a terminal anyway)")


# Commands whose rerun picks up what the stopped one finished (downloads, hashes, a run's stages, the
# files a takedown or withdrawal recorded); the others keep nothing half-done and start again.
RESUMED = {"collect", "curate", "run", "remove", "withdraw"}


def rerun_hint(command: str) -> str:
    if command == "run":
        return ("rerun the same command to resume (finished stages are kept, a shipped model too; an interrupted "
                "training starts again)")
    if command in RESUMED:
        return "rerun the same command to resume"
    return "nothing half-done was kept; rerun the same command to start again"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlc", description="Collect, curate, version and train: see README.md.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"mlc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("collect", help="search the source and download images into the catalog")
    add_writer(p)
    p.add_argument("--retry-failed", action="store_true",
                   help="download again the photos an earlier collect recorded failed for good (HTTP 403, not an "
                        "image, ...): after an image host that failed for everyone recovered")
    p.set_defaults(func=commands.cmd_collect)

    p = sub.add_parser("curate", help="verify, hash, quarantine and deduplicate what was collected")
    add_writer(p)
    p.set_defaults(func=commands.cmd_curate)

    p = sub.add_parser("build", help="publish the curated images as a new dataset version")
    add_writer(p)
    p.add_argument("--repair", action="store_true",
                   help="when the latest version is damaged (files deleted or changed), publish a fresh "
                        "version from the catalog instead of failing; an intact latest version is left as it "
                        "is, and older versions are never rebuilt (use the latest)")
    p.set_defaults(func=commands.cmd_build)

    p = sub.add_parser("train", help="train the multi-label model on a dataset version")
    add_writer(p)
    p.add_argument("--version", help="dataset version: vN or latest (default: latest)")
    p.add_argument("--alternatives", action="store_true", help="also train the comparison heads")
    p.add_argument("--continue", dest="continue_from", metavar="BUNDLE",
                   help="continue this model's network (folder, name or latest) for mine.retrain_epochs "
                        "(not train.epochs), as a mining round's retrain does")
    p.set_defaults(func=model_commands.cmd_train)

    p = sub.add_parser("mine", help="move pool images the model wrongly accepts into the negatives")
    add_writer(p)
    p.add_argument("--model", help="model bundle: folder, name or latest (default: data/models/LATEST)")
    p.add_argument("--round", type=int, metavar="N",
                   help="mining: the round's number, recorded with every image it moves or holds (default: the "
                        "round after the last the catalog records; a round mined again adds to its record and cap); "
                        "with --undo: the round to put back (required)")
    p.add_argument("--undo", action="store_true", help="put round N's mined negatives (and the images it held) "
                                                       "back into the pool")
    p.add_argument("--photo-id", action="append", help="with --undo: only these photos (repeatable)")
    p.set_defaults(func=model_commands.cmd_mine, usage_error=p.error)

    p = sub.add_parser("predict", help="which classes an image shows, or none of them")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="images, folders, quoted globs, @list.txt; without --model the first is the bundle")
    p.add_argument("--model", help="bundle folder, bundle name, or latest (data/models/LATEST, or -c's data root)")
    p.add_argument("-c", "--config", help="pipeline YAML config (its data root's models)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--json", action="store_true")
    add_no_progress(p)
    p.add_argument("--max-pixels", type=int, default=64_000_000,
                   help="refuse larger images from their header, before decoding (default: 64 MP)")
    p.set_defaults(func=model_commands.cmd_predict)

    p = sub.add_parser("models", help="list model bundles with their metrics, or compare two")
    p.add_argument("-c", "--config", help="pipeline YAML config (default: ./data/models)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two bundles (folder, name or latest)")
    p.set_defaults(func=model_commands.cmd_models)

    p = sub.add_parser("promote", help="make a bundle the LATEST model (what predict/mine use by default)")
    p.add_argument("bundle", help="bundle name or folder under the models folder")
    p.add_argument("-c", "--config", help="pipeline YAML config (default: ./data/models)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    p.set_defaults(func=model_commands.cmd_promote)

    p = sub.add_parser("export", help="write a published dataset version as imagefolder, hf, webdataset or fiftyone")
    p.add_argument("version", help="a version folder, or with -c: vN or latest")
    p.add_argument("--format", required=True, choices=["imagefolder", "hf", "webdataset", "fiftyone"])
    p.add_argument("--out", help="output folder (default: DATA_DIR/exports/NAME-vN-FORMAT with -c, else ./NAME-vN-FORMAT)")
    p.add_argument("--force", action="store_true", help="replace an earlier export at --out")
    p.add_argument("--shard-size", type=int, help="webdataset: images per tar shard (default 1000)")
    p.add_argument("-c", "--config", help="pipeline YAML config (to name versions as vN / latest)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    p.set_defaults(func=commands.cmd_export)

    p = sub.add_parser("run", help="the whole job in-process: collect, curate, build, train, mine, retrain, report")
    add_writer(p)
    p.set_defaults(func=commands.cmd_run)

    p = sub.add_parser("remove", help="take photos down (owner request, licence change): out of every future version")
    add_config(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--photo-id", help="the source's photo id")
    which.add_argument("--owner", help="every photo of this owner (id or name), now and later")
    which.add_argument("--query", help="every photo found by this search query")
    p.add_argument("--source", help="with --photo-id: only this source's photo (flickr, local, urls...); "
                                    "ids repeat across sources")
    p.add_argument("--reason", required=True, help="why (kept in the catalog)")
    p.add_argument("--no-wait", action="store_true",
                   help="fail at once (exit code 75) when another command is writing to the data root")
    p.set_defaults(func=commands.cmd_remove)

    p = sub.add_parser("withdraw", help="take a published dataset version out of use for good (its name is kept)")
    add_config(p)
    p.add_argument("version", help="the version to withdraw (vN)")
    p.add_argument("--reason", required=True, help="why (kept in datasets/<name>/WITHDRAWN)")
    p.add_argument("--no-wait", action="store_true",
                   help="fail at once (exit code 75) when another command is writing to the data root")
    p.set_defaults(func=commands.cmd_withdraw)

    p = sub.add_parser("serve-flickr", help="run the bundled Flickr-compatible server (offline world)",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="see `mlc serve-flickr --help`")
    p.set_defaults(func=commands.cmd_serve_flickr)

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
    p.set_defaults(func=model_commands.cmd_weights)

    p = sub.add_parser("review", help="browse and correct the catalog in a local web app (docs/review.md)")
    add_config(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (not loopback: a token is required)")
    p.add_argument("--port", type=int, default=8777)
    p.set_defaults(func=commands.cmd_review)

    p = sub.add_parser("inspect", help="what is in the catalog and the datasets")
    add_config(p)
    p.add_argument("--version", help="dataset version to inspect: vN or latest (default: latest)")
    p.add_argument("--html", help="write a self-contained HTML report to this path")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=commands.cmd_inspect)

    from mlc_pipeline.catalog_commands import add_catalog_parser
    add_catalog_parser(sub, add_writer)      # mlc catalog migrate
    add_verbose(sub)
    return parser


def add_verbose(sub: argparse._SubParsersAction) -> None:
    """`mlc inspect -v` as well as `mlc -v inspect`, on every level: `mlc catalog migrate -c X -v` too
    (only first-level commands had it, and a nested one refused -v with exit 2: the docs27 audit).
    SUPPRESS: absent after a sub-command, the value of the level above stands."""
    for name, p in sub.choices.items():
        if name == "serve-flickr":        # its own parser takes -v (main hands it the arguments)
            continue
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                add_verbose(action)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    lead = next((i for i, a in enumerate(argv) if a not in ("-v", "--verbose")), len(argv))
    if argv[lead:lead + 1] == ["serve-flickr"]:   # its own parser: options like --help pass straight through
        from mlc_pipeline.flickr_server import serve_main
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return serve_main(argv[lead + 1:] + argv[:lead])       # `mlc -v serve-flickr` as `serve-flickr -v`
    args = build_parser().parse_args(argv)
    if args.command == "mine" and args.photo_id and not args.undo:     # argparse has no "needs" between options
        args.usage_error("--photo-id only goes with --undo (which photos of round N to put back); "
                         "mining scores the whole pool")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not os.environ.get("MLC_LIBRARY_DEBUG"):     # -v is for our own debug lines
        for name in WIRE_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    install_log_redaction()
    progress.configure(False if getattr(args, "no_progress", False) else None)   # None: on in a terminal
    from mlc_pipeline.catalog import CatalogBusy, CatalogError
    signal.signal(signal.SIGTERM, raise_terminated)
    interrupts.install()            # a Ctrl-C swallowed by a finalizer is raised again (interrupts.py)
    try:
        code = args.func(args)
        interrupts.check()          # the last safe point: swallowed at the very end, still exit 130
        return code
    except (ConfigError, MissingCredentials, UnknownVersion) as exc:
        print(f"mlc: {shown(exc)}", file=sys.stderr)
        return 2
    except (DataRootBusy, CatalogBusy) as exc:
        print(f"mlc: {shown(exc)}", file=sys.stderr)
        return 75                               # EX_TEMPFAIL: try again later
    except VersionDamaged as exc:
        print(f"mlc: {shown(exc)}", file=sys.stderr)
        return 3
    except Terminated:
        print(f"mlc: terminated (SIGTERM); {rerun_hint(args.command)}", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"mlc: interrupted; {rerun_hint(args.command)}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return quiet_broken_pipe()
    except (CatalogError, ReadOnlyDataRoot, ClusterLost) as exc:
        print(f"mlc: {shown(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        if target := temp_target(Path(str(exc.filename or ""))):      # our temp file: name what the user asked for
            where = f" {target.parent} (writing {target.name} there)"
        if exc.errno in (errno.EACCES, errno.EPERM):     # a folder or file this user may not use: no bug
            print(f"mlc: permission denied:{where or ' ' + str(exc)}; check who owns it and its permissions (or "
                  f"name another place), then rerun the same command", file=sys.stderr)
            return 1
        if exc.errno not in DISK_ERRNOS:
            return last_line_of_defence(exc)
        if exc.errno == errno.EROFS:                     # no space to free: the mount is read-only
            print(f"mlc: cannot write{where}: {exc.strerror} (EROFS); make it writable or name a place on a "
                  f"writable disk, then rerun the same command", file=sys.stderr)
            return 1
        print(f"mlc: cannot write{where}: {exc.strerror} ({errno.errorcode[exc.errno]}); free space or fix the "
              f"disk, then rerun the same command", file=sys.stderr)
        return 1
    except Exception as exc:
        return last_line_of_defence(exc)


def shown(exc: BaseException) -> str:
    """An error's text for the `mlc:` line: secrets masked, control characters escaped (it may quote a
    remote reply: the security26 audit saw one retitle and clear the terminal)."""
    return printable(redact(str(exc)), LINES)


def quiet_broken_pipe() -> int:
    """`mlc inspect | head`: the reader left. Exit quietly as tools killed by SIGPIPE do (128 + 13);
    stdout goes to /dev/null so that flushing it at exit cannot raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 128 + signal.SIGPIPE


def last_line_of_defence(exc: Exception) -> int:
    """Secrets masked, a traceback only for bugs."""
    from mlc_pipeline.collect.rawfiles import StorageError
    from mlc_pipeline.collect.flickr import SourceError
    # A diverged training is the data's and the settings' doing, not a bug. Looked up, not imported:
    # only a process that imported the training module (torch, fastai) can have raised it.
    train, build = sys.modules.get("mlc_pipeline.model.train"), sys.modules.get("mlc_pipeline.dataset.build")
    if isinstance(exc, StorageError) or (train is not None and isinstance(exc, train.TrainingDiverged)) or (
            build is not None and isinstance(exc, build.NothingToBuild)):
        print(f"mlc: {shown(exc)}", file=sys.stderr)
        return 1
    bundle = sys.modules.get("mlc_pipeline.model.bundle")
    if bundle is not None and isinstance(exc, bundle.BundleError):      # a damaged model, as predict says it
        print(f"mlc: {shown(exc)}", file=sys.stderr)
        return 2
    if not isinstance(exc, SourceError):
        print(printable(redact(traceback.format_exc()), LINES), file=sys.stderr)
    print(f"mlc: {type(exc).__name__}: {shown(exc)}", file=sys.stderr)
    return 1


# After an interruption the exit's own clean-up may wait forever on a lock the interrupted code held:
# urllib3 closing its pools at exit (seen once in ~100 Ctrl-Cs of `mlc collect`, the verify22 audit).
# The run is recorded as interrupted by then, so the process ends after this grace instead of hanging.
EXIT_GRACE_S = 20.0


def entry() -> None:
    """The `mlc` command: main(), then exit; an interrupted one exits within EXIT_GRACE_S."""
    code = main()
    if code in (130, 128 + signal.SIGTERM):
        def watchdog() -> None:
            time.sleep(EXIT_GRACE_S)
            print(f"mlc: the exit's clean-up still waited after {EXIT_GRACE_S:g} s; ended without it", file=sys.stderr)
            sys.stderr.flush()
            os._exit(code)
        threading.Thread(target=watchdog, name="exit-watchdog", daemon=True).start()
    sys.exit(code)


if __name__ == "__main__":
    entry()
