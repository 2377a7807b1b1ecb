"""Load test of ``xai-engine serve`` (Ray Serve, local): 8 concurrent clients x 200 requests at ``--max-batch`` 1 and 8.

    python benchmarks/serve_load.py [--artifact reciprocam-efficientnet_lite0-onnx] [--clients 8] [--requests 200]

Both configurations run at once on one local Ray Serve, as two applications (``/b1`` and ``/b8``, one replica each),
and the load alternates between them in rounds (``--rounds``, each of requests/rounds per client), so that both see
the same machine load. Localhost only, bounded (every request has a timeout, the whole run a deadline), and it stops
Ray Serve by itself. Every answer's map (``saliency=npy``, float32) is compared with the in-process Engine's map of
the same photo. Prints a table and writes ``serve_load.json`` and ``serve_load.csv`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import Engine  # noqa: E402
from engine.fileio import atomic_write  # noqa: E402
from engine.preprocess.decode import list_image_files  # noqa: E402
from engine.serve import build_app, decode_saliency  # noqa: E402

CONFIGS = {"b1": 1, "b8": 8}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, data: bytes, timeout: float) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "image/jpeg"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def run_round(url: str, photos: list[bytes], clients: int, per_client: int, offset: int, timeout: float) -> list[dict]:
    """``clients`` threads, each sending ``per_client`` requests one after the other; one record per request."""
    records: list[dict] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for i in range(per_client):
            k = (offset + c * per_client + i) % len(photos)
            t0 = time.perf_counter()
            try:
                status, answer = _post(f"{url}/explain?saliency=npy", photos[k], timeout)
                error = None if status == 200 else answer.get("error", f"HTTP {status}")
            except Exception as e:  # noqa: BLE001 - a refused or timed-out request is an error row, not a crash
                status, answer, error = 0, {}, f"{type(e).__name__}: {e}"
            ms = (time.perf_counter() - t0) * 1e3
            rec = {"photo": k, "status": status, "ms": ms, "error": error, "answer": answer if error is None else None}
            with lock:
                records.append(rec)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", default="reciprocam-efficientnet_lite0-onnx")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--photos", default=str(ROOT.parent / "shared" / "data" / "imagenet-sample"))
    p.add_argument("--n-photos", type=int, default=32, help="distinct photos the clients cycle through")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=200, help="requests per client per configuration")
    p.add_argument("--rounds", type=int, default=8, help="alternations between the configurations")
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--timeout", type=float, default=120.0, help="per request, seconds")
    p.add_argument("--deadline", type=float, default=3600.0, help="whole run, seconds")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve-load"))
    args = p.parse_args(argv)
    if args.requests % args.rounds:
        p.error("--requests must be a multiple of --rounds")

    import ray
    from ray import serve

    folder = Path(args.photos)
    files = list_image_files(folder, recursive=True) if folder.is_dir() else []
    if not files:
        files = sorted((ROOT / "examples").glob("*.jpg"))
    files = files[: args.n_photos]
    photos = [f.read_bytes() for f in files]
    print(f"{len(photos)} photos from {files[0].parent}", file=sys.stderr)

    engine = Engine.load(args.artifact, backend=args.backend)
    reference = [engine.explain(b, keep_image=False).saliency for b in photos]
    engine.close()

    port = _free_port()
    ray.init(include_dashboard=False, log_to_driver=False)
    records: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    wall = dict.fromkeys(CONFIGS, 0.0)
    start = time.monotonic()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for name, batch in CONFIGS.items():
            app = build_app(args.artifact, max_batch=batch, batch_wait_ms=args.batch_wait_ms, backend=args.backend)
            serve.run(app, name=name, route_prefix=f"/{name}")
        per_round = args.requests // args.rounds
        for r in range(args.rounds):
            order = list(CONFIGS) if r % 2 == 0 else list(reversed(CONFIGS))  # A B, B A, ...: no position bias
            for name in order:
                if time.monotonic() - start > args.deadline:
                    raise TimeoutError(f"the run passed its deadline of {args.deadline} s")
                t0 = time.perf_counter()
                recs = run_round(
                    f"http://127.0.0.1:{port}/{name}", photos, args.clients, per_round, r * 977, args.timeout
                )
                wall[name] += time.perf_counter() - t0
                records[name].extend(recs)
            done = sum(len(v) for v in records.values())
            print(f"round {r + 1}/{args.rounds}: {done} requests", file=sys.stderr, flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()

    rows = []
    for name, recs in records.items():
        ok = [r for r in recs if r["error"] is None]
        diffs = [float(np.abs(decode_saliency(r["answer"]["saliency"]) - reference[r["photo"]]).max()) for r in ok]
        same = sum(np.array_equal(decode_saliency(r["answer"]["saliency"]), reference[r["photo"]]) for r in ok)
        lat = np.array([r["ms"] for r in ok]) if ok else np.array([np.nan])
        batches = [r["answer"]["batch_size"] for r in ok]
        rows.append(
            {
                "max_batch": CONFIGS[name],
                "clients": args.clients,
                "requests": len(recs),
                "errors": len(recs) - len(ok),
                "p50_ms": round(float(np.percentile(lat, 50)), 1),
                "p95_ms": round(float(np.percentile(lat, 95)), 1),
                "throughput_rps": round(len(ok) / wall[name], 2),
                "mean_batch": round(float(np.mean(batches)), 2) if batches else 0.0,
                "maps_bit_identical": int(same),
                "max_abs_diff": max(diffs) if diffs else float("nan"),
                "first_errors": sorted({r["error"] for r in recs if r["error"]})[:3],
            }
        )
    b1, b8 = rows
    summary = {
        "artifact": args.artifact,
        "backend": args.backend,
        "photos": len(photos),
        "batch_wait_ms": args.batch_wait_ms,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "throughput_ratio_b8_over_b1": round(b8["throughput_rps"] / b1["throughput_rps"], 3),
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "serve_load.json", json.dumps(summary, indent=2) + "\n")
    cols = [k for k in rows[0] if k != "first_errors"]
    lines = [",".join(cols)] + [",".join(str(r[k]) for k in cols) for r in rows]
    atomic_write(out / "serve_load.csv", "\n".join(lines) + "\n")
    print("| max batch | requests | errors | p50 ms | p95 ms | requests/s | mean batch | maps identical |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['max_batch']} | {r['requests']} | {r['errors']} | {r['p50_ms']} | {r['p95_ms']} | "
            f"{r['throughput_rps']} | {r['mean_batch']} | {r['maps_bit_identical']}/{r['requests'] - r['errors']} "
            f"(max diff {r['max_abs_diff']:.1e}) |"
        )
    print(f"throughput ratio, max batch 8 / 1: {summary['throughput_ratio_b8_over_b1']}")
    return 0 if all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
