"""Benchmark reporting, one home: percentiles, fixed-width tables, JSON and CSV records (written atomically)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .fileio import atomic_write


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
