"""What an object-store data root costs at the stage boundaries (sync.py), on a local S3 server.

Collects, curates and builds a small project from the bundled server into a local cache, then times,
against moto's S3 server on loopback: the first publish into an empty bucket, a rerun of it (nothing
new), and what a fresh machine fetches into an empty cache before `train` (catalog + latest version)
and before `build` (catalog + every raw file + latest version). Loopback: no network latency, so
these are the per-object overheads of s3fs + the server, not what a real region costs.

    .venv/bin/python bench/bench_objectstore.py [--count 60]
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path

os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

from mlc_pipeline import sync  # noqa: E402
from mlc_pipeline.config import parse_config  # noqa: E402


def config(folder: Path, endpoint: str, count: int, cache: str) -> dict:
    return {"data_dir": "s3://bench/proj", "cache_dir": str(folder / cache),
            "storage_options": {"endpoint_url": endpoint},
            "source": {"kind": "local", "local": {"seed": 0, "scale": 0.3, "port": 0}, "sizes": ["url_n", "url_m"]},
            "classes": {"balloon": {"queries": ["balloon"], "count": count},
                        "kite": {"queries": ["kite"], "count": count}},
            "other": {"queries": ["landscape", "texture"], "count": count}}


def timed(label: str, fn) -> None:
    started = time.perf_counter()
    out = fn()
    print(f"{label:<58} {time.perf_counter() - started:6.2f} s  {out if out is not None else ''}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=60, help="images per class and for other")
    args = ap.parse_args()
    import logging
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    from moto.server import ThreadedMotoServer
    import s3fs
    with socket.socket() as s:           # a free loopback port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    s3fs.S3FileSystem(endpoint_url=endpoint).mkdir("bench")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            cfg = parse_config(config(folder, endpoint, args.count, "cache-a"), folder)
            from mlc_pipeline.dataset.build import build_dataset
            from mlc_pipeline.pipeline import collect_and_curate
            collect_and_curate(cfg, progress=False)
            build_dataset(cfg)
            files = [p for p in cfg.data_dir.rglob("*") if p.is_file() and not p.name.startswith(".")]
            print(f"cache: {len(files)} files, {sum(p.stat().st_size for p in files) / 1e6:.1f} MB")
            store = sync.store_of(cfg)
            timed("publish into an empty bucket", lambda: sync.publish(cfg))
            held = store.listing("")
            print(f"bucket: {len(held)} objects, {sum(i['size'] for i in held.values()) / 1e6:.1f} MB")
            timed("publish again (nothing new)", lambda: sync.publish(cfg))
            fresh = parse_config(config(folder, endpoint, args.count, "cache-b"), folder)
            timed("empty cache, before train: catalog + latest version", lambda: sync.pull(fresh, "train"))
            timed("same cache, before train again (complete: nothing)", lambda: sync.pull(fresh, "train"))
            other = parse_config(config(folder, endpoint, args.count, "cache-c"), folder)
            timed("empty cache, before build: catalog + raw files + version", lambda: sync.pull(other, "build"))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
