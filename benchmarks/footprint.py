#!/usr/bin/env python
"""Install footprint and cold start per install kind: the edge installs (no torch) against the full torch install.

For each kind it makes a fresh venv (``python -m venv``), installs the package into it (a real install, not an
editable one, from a copy of ``pyproject.toml``, ``README.md`` and ``engine/``, so nothing is written into the
checkout), and measures:

* ``site_packages_mb``: ``du`` of the venv's site-packages (disk usage, MB = 10^6 bytes), and its largest entries;
* ``cold_start_s``: process start to first map, the median of ``--runs`` fresh processes of
  ``python -m engine.cli explain IMAGE --out DIR --quiet`` with the default artifact (wall time around the whole
  process, so interpreter start, imports, artifact load and verification, session creation, decode, inference and
  writing the PNG/NPY are all in it). One untimed run before them warms the OS file cache and records whether the
  process imported torch and which backend ran.

Kinds:
    * ``edge-onnx``: ``pip install ".[onnx]"``: the default resolves to the ONNX built-in, run on ONNX Runtime;
    * ``edge-openvino``: ``pip install ".[openvino]"``: the same ONNX built-in, run on OpenVINO;
    * ``full-torch``: ``pip install torch==2.13.0 ".[torch]"``: the default torch artifact on the torch backend.

Usage::

    nice python benchmarks/footprint.py                      # all three kinds (a few minutes; pip needs PyPI)
    nice python benchmarks/footprint.py --kinds edge-onnx --runs 5 --keep --work /tmp/fp

Writes ``benchmarks/results/footprint.json`` (rows + environment) and ``footprint.csv``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.report import format_table, write_csv, write_json  # noqa: E402

KINDS: dict[str, dict[str, Any]] = {
    "edge-onnx": {"install": [".[onnx]"], "what": 'pip install ".[onnx]"'},
    "edge-openvino": {"install": [".[openvino]"], "what": 'pip install ".[openvino]"'},
    "full-torch": {"install": ["torch==2.13.0", ".[torch]"], "what": 'pip install torch==2.13.0 ".[torch]"'},
}
KEY_PACKAGES = ("torch", "timm", "onnxruntime", "openvino", "onnx", "numpy", "pillow")
COLUMNS = ["kind", "install", "site_packages_mb", "cold_start_s", "backend", "artifact", "imports_torch"]


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kwargs)


def copy_sources(dst: Path) -> Path:
    """What goes into the wheel, copied (a build writes build/ and *.egg-info beside the sources)."""
    dst.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dst / name)
    shutil.copytree(ROOT / "engine", dst / "engine", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dst


def site_packages(venv: Path) -> Path:
    (sp,) = venv.glob("lib/python*/site-packages")
    return sp


def du_bytes(path: Path) -> int:
    """Disk usage (``du -sk``) in bytes."""
    return int(_run(["du", "-sk", str(path)]).stdout.split()[0]) * 1024


def largest_entries(sp: Path, n: int = 6) -> list[dict[str, Any]]:
    sizes = [(du_bytes(p), p.name) for p in sp.iterdir() if p.is_dir() and not p.name.endswith(".dist-info")]
    return [{"name": name, "mb": round(b / 1e6, 1)} for b, name in sorted(sizes, reverse=True)[:n]]


def installed_versions(python: Path) -> dict[str, str]:
    listed = json.loads(_run([str(python), "-m", "pip", "list", "--format", "json"]).stdout)
    have = {d["name"].lower(): d["version"] for d in listed}
    return {k: have[k] for k in KEY_PACKAGES if k in have}


PROBE = """
import json, sys
import engine.cli
from engine.artifact import default_artifact_path
rc = engine.cli.main(["explain", sys.argv[1], "--out", sys.argv[2], "--quiet"])
rec = json.loads(open(sys.argv[2] + "/results.jsonl").readline())
print(json.dumps({"rc": rc, "imports_torch": "torch" in sys.modules, "backend": rec.get("backend"),
                  "class_name": rec.get("class_name"), "artifact": default_artifact_path().name,
                  "engine_file": engine.cli.__file__}))
"""


def measure(kind: str, work: Path, src: Path, image: Path, runs: int) -> dict[str, Any]:
    spec = KINDS[kind]
    venv = work / f"venv-{kind}"
    python = venv / "bin" / "python"
    print(f"[{kind}] venv + {spec['what']} ...", file=sys.stderr, flush=True)
    _run([sys.executable, "-m", "venv", str(venv)])
    t0 = time.perf_counter()
    _run([str(python), "-m", "pip", "install", "--quiet", *spec["install"]], cwd=src)
    install_s = time.perf_counter() - t0
    sp = site_packages(venv)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    run_dir = work / f"run-{kind}"  # cwd outside the checkout: `python -m` puts the cwd on sys.path
    run_dir.mkdir()
    probe = json.loads(
        _run([str(python), "-c", PROBE, str(image), str(run_dir / "probe")], cwd=run_dir, env=env).stdout
    )
    if probe["rc"] != 0 or not probe["engine_file"].startswith(str(sp)):
        raise RuntimeError(f"{kind}: the probe run failed or did not use the installed package: {probe}")
    times = []
    for i in range(runs):
        out = run_dir / f"out{i}"
        t0 = time.perf_counter()
        _run(
            [str(python), "-m", "engine.cli", "explain", str(image), "--out", str(out), "--quiet"], cwd=run_dir, env=env
        )
        times.append(time.perf_counter() - t0)
        if not (out / f"{image.stem}.npy").is_file():
            raise RuntimeError(f"{kind}: run {i} wrote no map")
    print(f"[{kind}] {du_bytes(sp) / 1e6:.0f} MB, cold start {statistics.median(times):.2f} s", file=sys.stderr)
    return {
        "kind": kind,
        "install": spec["what"],
        "site_packages_mb": round(du_bytes(sp) / 1e6, 1),
        "cold_start_s": round(statistics.median(times), 3),
        "cold_start_runs_s": [round(t, 3) for t in times],
        "backend": probe["backend"],
        "artifact": probe["artifact"],
        "imports_torch": probe["imports_torch"],
        "class_name": probe["class_name"],
        "pip_install_s": round(install_s, 1),
        "largest": largest_entries(sp),
        "versions": installed_versions(python),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    p.add_argument("--runs", type=int, default=3, help="timed fresh processes per kind (median reported)")
    p.add_argument("--image", default=str(ROOT / "examples" / "wolf.jpg"))
    p.add_argument("--work", default=None, help="folder for the venvs (default: a temporary folder, removed)")
    p.add_argument("--keep", action="store_true", help="keep --work afterwards")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "footprint"), help="PATH (.json, .csv)")
    args = p.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        p.error(f"unknown kinds {unknown}; choose from {list(KINDS)}")
    image = Path(args.image).resolve()
    load_before = os.getloadavg()
    work = Path(args.work or tempfile.mkdtemp(prefix="xai-footprint-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        src = copy_sources(work / "src")
        for kind in kinds:
            try:
                rows.append(measure(kind, work, src, image, args.runs))
            except (subprocess.CalledProcessError, RuntimeError) as e:
                detail = getattr(e, "stderr", "") or ""
                print(f"[{kind}] failed: {e}\n{detail[-3000:]}", file=sys.stderr)
                rows.append({"kind": kind, "install": KINDS[kind]["what"], "error": str(e)})
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    meta = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "image": str(image.relative_to(ROOT)) if image.is_relative_to(ROOT) else str(image),
        "runs": args.runs,
        "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "command": "python -m engine.cli explain IMAGE --out DIR --quiet (fresh process, cwd outside the checkout)",
        "note": "MB = 10^6 bytes of `du -sk` of the venv's site-packages (pip, setuptools included); cold start is "
        "the wall time of the whole process, median of the runs, after one untimed run that warms the file cache",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), {"meta": meta, "rows": rows})
    write_csv(out.with_suffix(".csv"), rows, COLUMNS, exclude=("largest", "versions"))
    print(
        format_table(
            rows,
            COLUMNS,
            {"site_packages_mb": lambda v: f"{v:.0f}", "cold_start_s": lambda v: f"{v:.2f}"},
        )
    )
    print(f"-> {out.with_suffix('.json')}, {out.with_suffix('.csv')}", file=sys.stderr)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
