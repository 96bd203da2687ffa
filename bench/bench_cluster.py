"""collect + curate on the single-process path, on 1 and on 2 Dask workers, and downloads vs img2dataset.

Everything runs against one bundled Flickr-compatible server in its own process (so its threads do
not share a GIL with any client), with `--latency-ms` added to every image response (a CDN's round
trip). An untimed collect first warms the server's render cache, so no mode pays for drawing pictures.
Then, each on a fresh data root and in this order:

1. single process: `collect(cfg)` then `curate(cfg)` (downloads on threads, hashing on curate's
   process pool), exactly as `mlc collect` / `mlc curate` run;
2. the same with `cluster.address` set to a `distributed.LocalCluster` of 1 worker process, then 2
   (one thread each): downloads, verify + hash in chunks on the workers (mlc_pipeline/executor.py);
3. download only, on the URLs the single-process collect downloaded: our `Downloader` (the per-host
   bound = `--connections`) and img2dataset (`processes_count=1, thread_count=--connections`, files
   output, `resize_mode='no'`; once as it runs by default, decoding and re-encoding each image, once
   with `disable_all_reencoding=True`, its pure-download mode) against the same server.

Prints seconds and images/s per stage and the ratios to the single-process path; checks that every
mode ends with the same catalog statuses. The machine's load average is printed at the start and end.

    nice -n 10 .venv/bin/python bench/bench_cluster.py [--count 100] [--latency-ms 50] [--connections 16]
        [--img2dataset-path /tmp/i2d]   # a folder img2dataset was pip-installed into with --target
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlc_pipeline.catalog import Catalog  # noqa: E402
from mlc_pipeline.collect.download import Downloader, DownloadJob  # noqa: E402
from mlc_pipeline.collect.stage import collect  # noqa: E402
from mlc_pipeline.config import SourceSettings, load_config  # noqa: E402
from mlc_pipeline.curate.stage import curate  # noqa: E402

os.environ.setdefault("FLICKR_API_KEY", "bench-key-0000")
os.environ.setdefault("FLICKR_API_SECRET", "bench-secret-0000")


def start_server(port: int, scale: float, latency_ms: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "mlc_pipeline.cli", "serve-flickr", "--port", str(port),
                             "--scale", str(scale), "--faults", f"image_latency_ms={latency_ms}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    for line in proc.stdout:
        if line.startswith("Static images"):
            return proc
    raise SystemExit(f"the server did not start (exit {proc.wait()})")


def write_config(folder: Path, port: int, count: int, connections: int) -> Path:
    host = f"127.0.0.1:{port}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bench.yaml"
    path.write_text(f"""
data_dir: {folder / 'data'}
source:
  kind: flickr
  rest_url: "http://{host}/services/rest/"
  allowed_hosts: ["{host}"]
  sizes: [url_z, url_n, url_m]
  per_host_concurrency: {connections}
  retry: {{attempts: 3, base_delay_s: 0.05, max_delay_s: 0.5}}
classes:
  balloon: {{queries: [balloon], count: {count}}}
  kite: {{queries: [kite], count: {count}}}
other: {{queries: [landscape, texture], count: {count}}}
""")
    return path


def run_mode(folder: Path, port: int, args, address: str | None) -> dict:
    overrides = {"cluster": {"address": address}} if address else {}
    cfg = load_config(write_config(folder, port, args.count, args.connections), overrides)
    t0 = time.perf_counter()
    summary = collect(cfg, progress=False)
    t1 = time.perf_counter()
    curated = curate(cfg)
    t2 = time.perf_counter()
    with Catalog(cfg.catalog_path) as catalog:
        rows = catalog.candidates()
    raw_bytes = sum(r["bytes"] or 0 for r in rows)
    return {"collect_s": t1 - t0, "curate_s": t2 - t1, "downloaded": summary.downloaded,
            "inspected": curated.inspected, "statuses": dict(Counter(r["status"] for r in rows)),
            "bytes": raw_bytes, "rows": len(rows), "catalog_bytes": cfg.catalog_path.stat().st_size,
            "urls": [(r["photo_id"], r["url"]) for r in rows if r["status"] != "failed" and r["file_path"]]}


def run_on_cluster(folder: Path, port: int, args, workers: int) -> dict:
    from distributed import LocalCluster

    t0 = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        started = time.perf_counter() - t0
        out = run_mode(folder, port, args, cluster.scheduler_address)
    out["cluster_start_s"] = started
    return out


def ours_download(urls, folder: Path, connections: int, host: str) -> tuple[float, int]:
    dl = Downloader(SourceSettings(per_host_concurrency=connections), [host], folder)
    jobs = [DownloadJob(i, pid, url) for i, (pid, url) in enumerate(urls)]
    t0 = time.perf_counter()
    ok = sum(r.ok for r in dl.run(jobs))
    return time.perf_counter() - t0, ok


def img2dataset_download(urls, folder: Path, connections: int, path: str | None,
                         reencode: bool = True) -> tuple[float, float, int] | str:
    folder.mkdir(parents=True, exist_ok=True)
    url_file = folder / "urls.txt"
    url_file.write_text("".join(u + "\n" for _, u in urls))
    code = (f"from img2dataset import download; download(url_list={str(url_file)!r}, input_format='txt', "
            f"output_folder={str(folder / 'out')!r}, output_format='files', processes_count=1, "
            f"thread_count={connections}, resize_mode='no', timeout=20, retries=0, enable_wandb=False, "
            f"disallowed_header_directives=[], number_sample_per_shard=100000, incremental_mode='incremental', "
            f"disable_all_reencoding={not reencode})")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (path, os.environ.get("PYTHONPATH")) if p),
           "NO_ALBUMENTATIONS_UPDATE": "1"}      # no update check over the network
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        return f"img2dataset failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"
    stats = [json.loads(p.read_text()) for p in (folder / "out").glob("*_stats.json")]
    # (wall time with its start-up, its own download time from the shard stats, successes)
    return seconds, max(s["duration"] for s in stats), sum(s.get("successes", 0) for s in stats)


def rate(n: int, seconds: float) -> str:
    return f"{seconds:7.2f} s {n / seconds:8.1f} img/s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100, help="usable images per set (3 sets)")
    ap.add_argument("--scale", type=float, default=1.0, help="the server's world scale")
    ap.add_argument("--latency-ms", type=int, default=50)
    ap.add_argument("--connections", type=int, default=16, help="per-host bound = img2dataset's thread_count")
    ap.add_argument("--img2dataset-path", help="folder img2dataset is installed in (pip install --target)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}; {os.cpu_count()} cores", flush=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = start_server(port, args.scale, args.latency_ms)
    results: dict = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            run_mode(tmp / "warm", port, args, None)         # untimed: renders every image once
            results["single"] = run_mode(tmp / "single", port, args, None)
            results["dask-1"] = run_on_cluster(tmp / "dask1", port, args, 1)
            results["dask-2"] = run_on_cluster(tmp / "dask2", port, args, 2)
            urls = results["single"]["urls"]
            (tmp / "ours").mkdir()
            results["download-ours"] = ours_download(urls, tmp / "ours", args.connections, f"127.0.0.1:{port}")
            results["download-img2dataset"] = img2dataset_download(urls, tmp / "i2d", args.connections,
                                                                   args.img2dataset_path)
            results["download-img2dataset-raw"] = img2dataset_download(urls, tmp / "i2d-raw", args.connections,
                                                                       args.img2dataset_path, reencode=False)
    finally:
        server.terminate()
        server.wait(timeout=30)
    report(results, args)


def report(results: dict, args) -> None:
    single = results["single"]
    print(f"\n{single['downloaded']} downloads, {single['inspected']} files verified + hashed per mode; "
          f"{args.latency_ms} ms added per image, {args.connections} connections per host")
    print(f"catalog: {single['rows']} rows, {single['catalog_bytes'] / 1e6:.2f} MB; raw images {single['bytes'] / 1e6:.1f} MB "
          f"({single['bytes'] / max(1, single['downloaded']) / 1e3:.1f} kB each)")
    print(f"{'mode':8} {'collect':>27} {'curate (verify+hash)':>27}   ratio to single (collect / curate)")
    for mode in ("single", "dask-1", "dask-2"):
        r = results[mode]
        same = "" if r["statuses"] == single["statuses"] else f"  STATUSES DIFFER: {r['statuses']}"
        start = f"  (cluster start {r['cluster_start_s']:.1f} s, not counted)" if "cluster_start_s" in r else ""
        print(f"{mode:8} {rate(r['downloaded'], r['collect_s']):>27} {rate(r['inspected'], r['curate_s']):>27}   "
              f"{single['collect_s'] / r['collect_s']:.2f}x / {single['curate_s'] / r['curate_s']:.2f}x{start}{same}")
    n = len(single["urls"])
    t_ours, ok = results["download-ours"]
    print(f"\ndownload only, the same {n} URLs, {args.connections} connections:")
    print(f"  mlc Downloader          {rate(n, t_ours)}  ({ok}/{n} ok)")
    for key, what in (("download-img2dataset", "decode + re-encode (default)"),
                      ("download-img2dataset-raw", "disable_all_reencoding")):
        i2d = results[key]
        if isinstance(i2d, str):
            print(f"  img2dataset, {what}: {i2d}")
            continue
        print(f"  img2dataset, {what}:")
        print(f"    its shard stats       {rate(n, i2d[1])}  ({i2d[2]}/{n} ok; the shard's download time)")
        print(f"    wall                  {rate(n, i2d[0])}  (with its start-up: processes, imports)")
        print(f"    ratio img2dataset download time / ours: {i2d[1] / t_ours:.2f}x")
    print(f"load average at end: {os.getloadavg()}")
    if args.json:
        for r in results.values():
            if isinstance(r, dict):
                r.pop("urls", None)
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
