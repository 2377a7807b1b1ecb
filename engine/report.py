"""Benchmark reporting, one home: percentiles, bootstrap intervals, fixed-width tables, JSON and CSV records (written
atomically)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .fileio import atomic_write

BOOTSTRAP_RESAMPLES = 2000


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values`` with linear interpolation (NumPy's default method).

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("percentile of an empty sequence")
    ordered = sorted(float(v) for v in values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def bootstrap_ci(
    per_image: Sequence[float] | np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the mean over images (seeded): how much the value moves with the
    sample of images, to tell real differences between methods from noise. Non-finite values are left out; an
    empty input gives ``(nan, nan)``."""
    v = np.asarray(per_image, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(v), size=(resamples, len(v)))
    means = v[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_bootstrap_diff(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean of ``a - b`` over paired per-image values and its 95 % percentile-bootstrap interval (seeded): the images
    are resampled together, so what both methods find hard or easy cancels out.

    Returns:
        ``(mean difference, low, high)``.

    Raises:
        ValueError: ``a`` and ``b`` differ in length, are empty, or hold non-finite values.
    """
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape or len(x) == 0:
        raise ValueError(f"a paired bootstrap needs two equally long non-empty samples, got {len(x)} and {len(y)}.")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("a paired bootstrap needs finite values.")
    d = x - y
    idx = np.random.default_rng(seed).integers(0, len(d), size=(resamples, len(d)))
    means = d[idx].mean(axis=1)
    return float(d.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def format_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    formats: Mapping[str, Callable[[Any], str]] | None = None,
) -> str:
    """Rows as a fixed-width text table: a header line, a rule, one line per row.

    Args:
        rows: records (missing keys and None show as ``-``).
        columns: the keys shown, in order.
        formats: per-column formatter of a non-None value (default ``str``).
    """
    formats = formats or {}

    def cell(row: Mapping[str, Any], col: str) -> str:
        value = row.get(col)
        if value is None:
            return "-"
        return formats[col](value) if col in formats else str(value)

    cells = [[cell(r, c) for c in columns] for r in rows]
    widths = [max([len(c), *(len(line[i]) for line in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(lines)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return atomic_write(path, json.dumps(obj, indent=2) + "\n")


def write_csv(
    path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str], exclude: Sequence[str] = ()
) -> Path:
    """Write records as CSV, atomically: ``columns`` first, then any other keys (sorted) but ``exclude``; lists and
    dicts are JSON, None is empty."""
    extra = sorted({k for r in rows for k in r} - set(columns) - set(exclude))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*columns, *extra], extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow(
            {k: json.dumps(v) if isinstance(v, list | dict) else ("" if v is None else v) for k, v in r.items()}
        )
    return atomic_write(path, buf.getvalue())


#: The leading columns of every quality-benchmark CSV (one row per method, metric and preset).
METRIC_COLUMNS = ["dataset", "model", "method", "metric", "preset", "value", "ci95_low", "ci95_high", "n_images"]
