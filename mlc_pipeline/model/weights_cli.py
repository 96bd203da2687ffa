"""`mlc weights list | fetch`: what torchvision's cache holds, and fetching ImageNet weights there (or
into `--dest`) for copying to machines without internet (docs/training.md, "Pretrained weights on
machines without internet"). A cached file is read before it is called usable: a truncated file, or
another network's under the expected name, is listed as such, and `fetch` says so rather than
offering it for copying."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import torchvision

from mlc_pipeline.fsutil import sha256_file
from mlc_pipeline.model import weights as w


def cached_weights(archs: list[str] | None = None) -> list[dict]:
    """Each torchvision classification network's default weights, whether the cache holds their file,
    and what is wrong with it when it does (all networks when `archs` is None; cached ones first)."""
    rows = []
    for arch in archs or torchvision.models.list_models(module=torchvision.models):
        try:
            weights = w.imagenet_weights(arch)
        except ValueError:
            continue
        path = w.cache_path(weights)
        cached = path.is_file()
        rows.append({"arch": arch, "weights": w.weights_name(weights), "file": str(path), "cached": cached,
                     "problem": w.misfit(arch, path) if cached else None})
    return sorted(rows, key=lambda r: (not r["cached"], r["arch"]))


def weights_command(args) -> int:
    if args.arch == "auto":                      # arch auto's network, as with no name
        args.arch = w.RECIPES["pretrained"]["arch"]
    if args.action == "list":
        if args.arch:
            try:
                w.imagenet_weights(args.arch)
            except ValueError as exc:                  # `list resnet99` printed the header alone
                print(f"mlc weights list: {exc}", file=sys.stderr)
                return 2
        rows = cached_weights([args.arch] if args.arch else None)
        if not args.all and not args.arch:
            rows = [r for r in rows if r["cached"] or r["arch"] == w.RECIPES["pretrained"]["arch"]]
        home = w.hub_checkpoints_dir()
        there = next((d for d in (home, *home.parents) if d.exists()), home)    # what stands in its place
        print(f"torch hub cache: {home}" + ("" if there.is_dir() else f" (cannot be made: {there} is not a folder)"))
        for r in rows:
            state = "missing" if not r["cached"] else "unusable" if r["problem"] else "cached "
            print(f"{r['arch']:<22} {state}  {r['weights']:<40} {Path(r['file']).name}"
                  + (f"  (it {r['problem']}: delete it)" if r["problem"] else ""))
        return 0
    arch = args.arch or w.RECIPES["pretrained"]["arch"]
    try:
        weights = w.imagenet_weights(arch)
        cached = w.cache_path(weights, args.dest)
        if cached.is_file():
            if problem := w.misfit(arch, cached):
                raise w.WeightsUnavailable(f"{cached} is in the cache, but it {problem}: delete it, then fetch again")
            path = cached
        else:  # torch.hub announces the download on stdout; failing, one line on stderr says it all
            with contextlib.redirect_stdout(io.StringIO()):
                path = w.download(weights, args.dest, progress=True, timeout=args.timeout)
    except (ValueError, w.WeightsUnavailable) as exc:
        print(f"mlc weights fetch: {arch}: {exc}", file=sys.stderr)
        return 1
    print(f"{w.weights_name(weights)}\n{path}\nsha256 {sha256_file(path)}")
    return 0
