"""Batch explanation of a whole dataset into Parquet (``xai-engine explain-dataset``), in-process or on Ray Data.

>>> from engine.dataset import explain_dataset, read_results, rebuild_saliency
>>> summary = explain_dataset("photos/", "maps.parquet/")               # in-process; add ray="local" for Ray Data
>>> rows = read_results("maps.parquet/")                                 # one dict per image
>>> full = rebuild_saliency(rows[0])                                     # the full-size map, as Engine.explain gives

``out`` is a folder of Parquet part files, one row per image (:data:`COLUMNS`). Each part is written atomically
(temporary file + ``os.replace``) and named by a hash of the paths it holds, so an interrupted run leaves only whole
parts, and a rerun reads the paths already written, skips them and adds the rest: no duplicate rows, no torn files.
Images that cannot be read get a row with ``error`` set (and are not retried by a rerun).

Nothing here imports pyarrow or ray at module level: ``import engine`` stays free of both. Parquet needs pyarrow, and
``ray=...`` needs Ray Data (``pip install "xai-engine[ray]"``).
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EngineError, InputError
from .preprocess.decode import is_image_file, list_image_files

__all__ = [
    "COLUMNS",
    "explain_dataset",
    "list_sources",
    "read_done_paths",
    "read_error_paths",
    "read_results",
    "rebuild_saliency",
]

RAY_INSTALL = 'pip install "xai-engine[ray]"'
PART_PREFIX = "part-"
PATH_COLUMNS = ("path", "uri", "image", "file", "filename")
"""Column names taken as the image path in a CSV or Parquet list (the first present; else the first column)."""
LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})

COLUMNS = (
    "path",  # the image as listed in SRC (the key a rerun skips by)
    "class_id",  # predicted class (null on error)
    "class_name",
    "score",  # softmax probability of class_id
    "topk",  # list of {id, name, prob}, best first
    "target",  # the class the map explains
    "target_name",
    "target_score",
    "saliency_lowres",  # the explainer's map, flattened row-major, float16
    "saliency_shape",  # [h, w] of saliency_lowres
    "image_size",  # [width, height] of the decoded image = the full-size map's size
    "source_size",  # [width, height] as stored (differs from image_size when a large JPEG was decoded reduced)
    "crop_box",  # [left, top, right, bottom] of the region the network saw, in image_size pixels
    "resize_mode",  # crop / letterbox / squash
    "method",
    "backend",
    "overlay",  # file name of the PNG overlay in the overlays folder, or null
    "error",  # null, or why the image could not be explained
    "error_kind",
)


def _require_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise EngineError(f"explain-dataset writes Parquet and needs pyarrow: {RAY_INSTALL}.") from None
    return pyarrow


def _require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise EngineError(f"--ray needs Ray Data, which is not installed: {RAY_INSTALL}") from None
    return ray


def _schema():
    pa = _require_pyarrow()
    pair = pa.list_(pa.int32())
    return pa.schema(
        [
            ("path", pa.string()),
            ("class_id", pa.int32()),
            ("class_name", pa.string()),
            ("score", pa.float64()),
            ("topk", pa.list_(pa.struct([("id", pa.int32()), ("name", pa.string()), ("prob", pa.float64())]))),
            ("target", pa.int32()),
            ("target_name", pa.string()),
            ("target_score", pa.float64()),
            ("saliency_lowres", pa.list_(pa.float16())),
            ("saliency_shape", pair),
            ("image_size", pair),
            ("source_size", pair),
            ("crop_box", pa.list_(pa.float64())),
            ("resize_mode", pa.string()),
            ("method", pa.string()),
            ("backend", pa.string()),
            ("overlay", pa.string()),
            ("error", pa.string()),
            ("error_kind", pa.string()),
        ]
    )


# --------------------------------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------------------------------


def list_sources(src: str | os.PathLike | Sequence[str]) -> list[str]:
    """The images ``src`` names, in order, without repeats.

    Args:
        src: a folder (its image files, recursively, sorted; hidden files and non-images skipped), a text list
            (``.txt``/``.lst``/``.list``: one path or URI per line, blank lines and ``#`` comments skipped), a CSV or
            Parquet file (the column ``path``, ``uri``, ``image``, ``file`` or ``filename``, else the first one), or
            a list of paths. Relative paths are used as written (relative to the current folder).

    Raises:
        InputError: ``src`` does not exist or is of another kind.
    """
    if isinstance(src, (list, tuple)):
        items = [str(s) for s in src]
    else:
        p = Path(src)
        if p.is_dir():
            items = [str(f) for f in list_image_files(p, recursive=True)]
        elif not p.is_file():
            raise InputError(f"SRC {p} does not exist. Give a folder of images, or a .txt/.csv/.parquet list of paths.")
        elif p.suffix.lower() in LIST_SUFFIXES:
            lines = p.read_text(encoding="utf-8").splitlines()
            items = [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
        elif p.suffix.lower() == ".csv":
            items = _csv_paths(p)
        elif p.suffix.lower() in (".parquet", ".pq"):
            items = _parquet_paths(p)
        elif is_image_file(p):
            items = [str(p)]
        else:
            raise InputError(
                f"SRC {p} is neither a folder, an image, nor a .txt/.csv/.parquet list of paths (one per line or row)."
            )
    return list(dict.fromkeys(items))


def _pick_column(names: Sequence[str], where: Path) -> str:
    if not names:
        raise InputError(f"{where} has no columns; it needs a column of image paths (named path, uri or image).")
    lowered = {n.lower().strip(): n for n in names}
    return next((lowered[c] for c in PATH_COLUMNS if c in lowered), names[0])


def _csv_paths(p: Path) -> list[str]:
    with open(p, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return []
    header = rows[0]
    if any(h.lower().strip() in PATH_COLUMNS for h in header):
        col = header.index(_pick_column(header, p))
        body = rows[1:]
    else:  # no header: the first column holds the paths
        col, body = 0, rows
    return [r[col].strip() for r in body if len(r) > col and r[col].strip()]


def _parquet_paths(p: Path) -> list[str]:
    pa = _require_pyarrow()
    schema = pa.parquet.read_schema(p)
    col = _pick_column(schema.names, p)
    return [str(v) for v in pa.parquet.read_table(p, columns=[col]).column(col).to_pylist() if v is not None]


def read_bytes(path: str) -> bytes:
    """The bytes of a local path or of a URI that pyarrow's file systems open (``s3://``, ``gs://``, ``hdfs://``)."""
    if "://" in path and not path.startswith("file://"):
        import pyarrow.fs

        fs, inner = pyarrow.fs.FileSystem.from_uri(path)
        with fs.open_input_stream(inner) as fh:
            return fh.read()
    local = path[len("file://") :] if path.startswith("file://") else path
    with open(local, "rb") as fh:
        return fh.read()


# --------------------------------------------------------------------------------------------------------------------
# output folder
# --------------------------------------------------------------------------------------------------------------------


def _part_files(out: Path) -> list[Path]:
    return sorted(out.glob(f"{PART_PREFIX}*.parquet")) if out.is_dir() else []


def read_done_paths(out: str | os.PathLike) -> set[str]:
    """The ``path`` of every row already written to ``out`` (what a rerun skips)."""
    pa = _require_pyarrow()
    done: set[str] = set()
    for part in _part_files(Path(out)):
        done.update(pa.parquet.read_table(part, columns=["path"]).column("path").to_pylist())
    return done


def read_error_paths(out: str | os.PathLike) -> set[str]:
    """The ``path`` of every row in ``out`` whose ``error`` is set (images that failed, in this run or earlier)."""
    pa = _require_pyarrow()
    failed: set[str] = set()
    for part in _part_files(Path(out)):
        table = pa.parquet.read_table(part, columns=["path", "error"]).to_pydict()
        failed.update(p for p, e in zip(table["path"], table["error"], strict=True) if e is not None)
    return failed


def read_results(out: str | os.PathLike) -> list[dict[str, Any]]:
    """Every row in ``out``, as dicts (for large outputs read the folder with pyarrow, pandas or ray.data instead)."""
    pa = _require_pyarrow()
    rows: list[dict[str, Any]] = []
    for part in _part_files(Path(out)):
        rows.extend(pa.parquet.read_table(part).to_pylist())
    return rows


def _part_name(paths: Iterable[str]) -> str:
    digest = hashlib.sha256("\n".join(paths).encode("utf-8")).hexdigest()[:20]
    return f"{PART_PREFIX}{digest}.parquet"


def _write_part(out: Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows as one part, atomically, named by the hash of their paths."""
    from .fileio import atomic_write

    pa = _require_pyarrow()
    table = pa.Table.from_pylist(rows, schema=_schema())
    path = out / _part_name(r["path"] for r in rows)
    return atomic_write(path, lambda fh: pa.parquet.write_table(table, fh, compression="zstd"))


def _overlay_name(path: str) -> str:
    stem = Path(path.rstrip("/")).stem or "image"
    return f"{stem}-{hashlib.sha256(path.encode('utf-8')).hexdigest()[:10]}.png"


# --------------------------------------------------------------------------------------------------------------------
# rows
# --------------------------------------------------------------------------------------------------------------------


def _error_row(path: str, error: str, kind: str) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(path=path, error=error, error_kind=kind)
    return row


def explanation_row(path: str, exp: Any, overlay: str | None = None) -> dict[str, Any]:
    """One output row for an :class:`~engine.explanation.Explanation` or a
    :class:`~engine.explanation.FailedExplanation`."""
    if not exp.ok:
        return _error_row(path, exp.error, exp.kind)
    low = np.asarray(exp.saliency_lowres, dtype=np.float32)
    height, width = np.shape(exp.saliency)
    return {
        "path": path,
        "class_id": int(exp.class_id),
        "class_name": str(exp.class_name),
        "score": float(exp.score),
        "topk": [{"id": int(i), "name": str(n), "prob": float(p)} for i, n, p in exp.topk],
        "target": int(exp.target),
        "target_name": exp.target_name,
        "target_score": None if exp.target_score is None else float(exp.target_score),
        "saliency_lowres": low.astype(np.float16).ravel().tolist(),
        "saliency_shape": [int(v) for v in low.shape],
        "image_size": [int(width), int(height)],
        "source_size": [int(v) for v in (exp.source_size or (width, height))],
        "crop_box": [float(v) for v in (exp.crop_box or (0.0, 0.0, float(width), float(height)))],
        "resize_mode": exp.resize_mode,
        "method": exp.method,
        "backend": exp.backend,
        "overlay": overlay,
        "error": None,
        "error_kind": None,
    }


def rebuild_saliency(row: dict[str, Any]) -> np.ndarray:
    """The full-size saliency map of one output row, as :meth:`Engine.explain` returns it (up to the float16 rounding
    of ``saliency_lowres``): :func:`~engine.preprocess.saliency_to_image` with the row's size, box and resize mode.

    Args:
        row: a row of the output (a dict, e.g. from :func:`read_results`, or a pandas row).

    Returns:
        A float32 ``(height, width)`` array, ``(height, width)`` being ``row["image_size"]`` reversed.

    Raises:
        InputError: the row is an error row (it has no map).
    """
    from .preprocess import ImageMeta, saliency_to_image

    if row.get("error") is not None or row.get("saliency_lowres") is None:
        raise InputError(f"row {row.get('path')!r} has no saliency map: {row.get('error')}")
    shape = tuple(int(v) for v in row["saliency_shape"])
    low = np.asarray(row["saliency_lowres"], dtype=np.float16).reshape(shape)
    width, height = (int(v) for v in row["image_size"])
    meta = ImageMeta(
        original_size=(width, height),
        crop_box=tuple(float(v) for v in row["crop_box"]),
        resize_mode=row["resize_mode"],
    )
    return saliency_to_image(low.astype(np.float32), meta)


# --------------------------------------------------------------------------------------------------------------------
# explain_dataset
# --------------------------------------------------------------------------------------------------------------------


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def explain_dataset(
    src: str | os.PathLike | Sequence[str],
    out: str | os.PathLike,
    *,
    artifact: str | os.PathLike | None = None,
    backend: str = "auto",
    device: str = "auto",
    precision: str | None = None,
    batch_size: int = 8,
    part_size: int = 512,
    ray: str | None = None,
    actors: int = 1,
    gpus_per_actor: float = 0,
    cpus_per_actor: float = 1,
    overlays: str | os.PathLike | None = None,
    resize_mode: str | None = None,
    target: int | str | None = None,
    top_k: int = 5,
    max_pixels: int | None = 64_000_000,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Explain every image of ``src`` into Parquet part files in ``out`` (resumable; see the module docstring).

    Args:
        src: the images: see :func:`list_sources`.
        out: the output folder (created); parts already there are kept and their paths skipped.
        artifact, backend, device, precision, batch_size, resize_mode, max_pixels: as :meth:`Engine.load`.
        part_size: rows per Parquet part (the unit an interrupted run loses at most).
        ray: None (in-process, no Ray needed), ``"local"`` (start a local Ray, or use the one already initialised)
            or a Ray address (``"auto"``, ``"ray://host:10001"``).
        actors: Ray actors, each holding one Engine.
        gpus_per_actor: GPUs each actor reserves (fractions share a GPU); > 0 runs the Engine on ``cuda``.
        cpus_per_actor: CPUs each actor reserves (and the Engine's threads).
        overlays: a folder to write PNG overlays to (``<stem>-<hash>.png``, named in the ``overlay`` column).
        target: the class to explain for every image (id or name; default: the predicted one).
        top_k: classes in the ``topk`` column.
        limit: explain at most this many new images in this run (then stop; a rerun continues).
        progress: show progress (tqdm in-process, Ray Data's bars on Ray).

    Returns:
        A summary: ``images`` (in src), ``already_done`` (skipped), ``explained``, ``errors`` (error rows written by
        this run), ``errors_total`` (error rows in ``out`` for images in src, this run's and earlier runs'; the CLI
        exits 1 when it is not 0), ``parts_written``, ``seconds``, ``images_per_s`` (explained + errors per second of
        this run), ``out``, ``mode``.
    """
    _require_pyarrow()
    if batch_size < 1 or part_size < 1 or actors < 1:
        raise InputError("batch_size, part_size and actors must be >= 1.")
    ray_mod = _require_ray() if ray else None  # before any work: a missing Ray is one message
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is an existing file, not a folder. Give a folder path (it is created).")
    sources = list_sources(src)
    done = read_done_paths(out)
    todo = [s for s in sources if s not in done]
    pending = todo if limit is None else todo[: max(0, limit)]
    out.mkdir(parents=True, exist_ok=True)
    if overlays is not None:
        Path(overlays).mkdir(parents=True, exist_ok=True)
    settings = {
        "artifact": None if artifact is None else str(artifact),
        "backend": backend,
        "device": "cuda" if gpus_per_actor > 0 else device,
        "precision": precision,
        "batch_size": batch_size,
        "resize_mode": resize_mode,
        "max_pixels": max_pixels,
        "target": target,
        "top_k": top_k,
        "overlays": None if overlays is None else str(overlays),
    }
    t0 = time.perf_counter()
    if not pending:
        counts = {"explained": 0, "errors": 0, "parts_written": 0}
    elif ray_mod is None:
        counts = _run_local(pending, out, settings, part_size, progress)
    else:
        counts = _run_ray(
            ray_mod, ray, pending, out, settings, part_size, actors, gpus_per_actor, cpus_per_actor, progress
        )
    seconds = time.perf_counter() - t0
    n = counts["explained"] + counts["errors"]
    listed = set(sources)
    return {
        "images": len(sources),
        "already_done": len(sources) - len(todo),
        **counts,
        "errors_total": len(read_error_paths(out) & listed),
        "remaining": len(todo) - n,
        "seconds": round(seconds, 3),
        "images_per_s": round(n / seconds, 2) if n and seconds > 0 else 0.0,
        "out": str(out),
        "mode": "in-process" if ray_mod is None else f"ray ({ray}, {actors} actor(s))",
    }


def _load_engine(settings: dict[str, Any], threads: int | None = None):
    from .api import Engine

    return Engine.load(
        settings["artifact"],
        settings["backend"],
        device=settings["device"],
        precision=settings["precision"],
        threads=threads,
        max_pixels=settings["max_pixels"],
        batch_size=settings["batch_size"],
        resize_mode=settings["resize_mode"],
    )


def _explain_rows(engine, paths: Sequence[str], images: Sequence[Any], settings: dict[str, Any]) -> list[dict]:
    """Rows for images (paths, bytes or arrays) explained as one batch; overlays written if asked."""
    results = engine.explain_batch(
        list(images),
        engine.resolve_target(settings["target"]),
        top_k=settings["top_k"],
        keep_image=settings["overlays"] is not None,
        on_error="skip",
    )
    rows = []
    for path, exp in zip(paths, results, strict=True):
        overlay = None
        if exp.ok and settings["overlays"] is not None:
            from .fileio import atomic_write

            overlay = _overlay_name(path)
            picture = exp.overlay()
            atomic_write(Path(settings["overlays"]) / overlay, lambda fh, pic=picture: pic.save(fh, format="PNG"))
        rows.append(explanation_row(path, exp, overlay))
    return rows


def _read_or_error(path: str) -> bytes | BaseException:
    try:
        return read_bytes(path)
    except OSError as e:
        return e


def _run_local(pending: list[str], out: Path, settings: dict[str, Any], part_size: int, progress: bool) -> dict:
    from tqdm import tqdm

    engine = _load_engine(settings)
    engine.resolve_target(settings["target"])  # a bad class name fails before any work
    counts = {"explained": 0, "errors": 0, "parts_written": 0}
    bar = tqdm(total=len(pending), unit="img", disable=not progress, file=sys.stderr)
    try:
        for part in _chunks(pending, part_size):
            rows: list[dict[str, Any]] = []
            for batch in _chunks(part, engine.batch_size):
                data = [_read_or_error(p) if "://" in p else p for p in batch]
                ok = [(p, d) for p, d in zip(batch, data, strict=True) if not isinstance(d, BaseException)]
                by_path = {
                    p: _error_row(p, f"cannot read {p}: {d}", "ImageDecodeError")
                    for p, d in zip(batch, data, strict=True)
                    if isinstance(d, BaseException)
                }
                if ok:
                    for row in _explain_rows(engine, [p for p, _ in ok], [d for _, d in ok], settings):
                        by_path[row["path"]] = row
                rows.extend(by_path[p] for p in batch)
                bar.update(len(batch))
            _write_part(out, rows)
            counts["parts_written"] += 1
            counts["errors"] += sum(r["error"] is not None for r in rows)
            counts["explained"] += sum(r["error"] is None for r in rows)
    finally:
        bar.close()
        engine.close()
    return counts


# --------------------------------------------------------------------------------------------------------------------
# Ray Data
# --------------------------------------------------------------------------------------------------------------------


def _decode_batch(batch, draft: tuple[int, int], max_pixels: int | None, cwd: str):
    """Ray task stage: read and decode images ahead of the actors. ``path`` -> ``path``, ``pixels`` (raw RGB uint8),
    ``width``, ``height``, ``source_w``, ``source_h``, ``error``, ``error_kind``."""
    import pyarrow as pa

    from .preprocess import SOURCE_SIZE_KEY, load_image

    out: dict[str, list] = {k: [] for k in ("path", "pixels", "width", "height", "source_w", "source_h")}
    out["error"], out["error_kind"] = [], []
    for path in batch.column("path").to_pylist():
        try:
            where = read_bytes(path) if "://" in path else os.path.join(cwd, path)  # workers may run elsewhere
            image = load_image(where, max_pixels=max_pixels, draft=draft)
            pixels, (w, h) = np.asarray(image, dtype=np.uint8).tobytes(), image.size
            sw, sh = image.info.get(SOURCE_SIZE_KEY, image.size)
            err = kind = None
        except (EngineError, OSError) as e:
            pixels, w, h, sw, sh, err, kind = b"", 0, 0, 0, 0, str(e), type(e).__name__
        for key, value in zip(out, (path, pixels, w, h, sw, sh, err, kind), strict=True):
            out[key].append(value)
    types = {"pixels": pa.binary(), "error": pa.string(), "error_kind": pa.string()}
    return pa.table({k: pa.array(v, type=types.get(k)) for k, v in out.items()})


class _ExplainActor:
    """Ray actor stage: one Engine per actor; decoded images in, output rows (:func:`_schema`) out."""

    def __init__(self, settings: dict[str, Any], threads: int):
        self.settings = settings
        self.engine = _load_engine(settings, threads=threads)

    def __call__(self, batch):
        import pyarrow as pa

        cols = batch.to_pydict()
        rows_by_index: dict[int, dict] = {}
        ok, images = [], []
        for i, path in enumerate(cols["path"]):
            if cols["error"][i] is not None:
                rows_by_index[i] = _error_row(path, cols["error"][i], cols["error_kind"][i])
                continue
            shape = (cols["height"][i], cols["width"][i], 3)
            ok.append(i)
            images.append(np.frombuffer(cols["pixels"][i], dtype=np.uint8).reshape(shape))
        if ok:
            rows = _explain_rows(self.engine, [cols["path"][i] for i in ok], images, self.settings)
            for i, row in zip(ok, rows, strict=True):
                if row["error"] is None:  # the stored size, which the decoded array no longer carries
                    row["source_size"] = [cols["source_w"][i], cols["source_h"][i]]
                rows_by_index[i] = row
        return pa.Table.from_pylist([rows_by_index[i] for i in range(len(cols["path"]))], schema=_schema())


def _run_ray(ray, address, pending, out, settings, part_size, actors, gpus_per_actor, cpus_per_actor, progress) -> dict:
    from .api import resolve_target
    from .artifact import default_artifact_path, load_artifact
    from .preprocess import jpeg_draft_size

    art = load_artifact(settings["artifact"] or default_artifact_path(), verify=False)
    target = resolve_target(art, settings["target"])  # a bad class name fails here, before Ray starts
    folder = str(art.path.resolve()) if art.path else settings["artifact"]  # the actors may run in another folder
    settings = {**settings, "target": None if target < 0 else target, "artifact": folder}
    draft = jpeg_draft_size(art.preprocess.input_size)
    decode_cpus = 0.5 if cpus_per_actor != 0.5 else 0.25
    needed = actors * cpus_per_actor + decode_cpus  # the actors hold their CPUs: the decode tasks need some left
    if not ray.is_initialized():
        if address in (None, "local"):  # logical CPUs: enough for the actors and one decode task on a small machine
            ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(needed)), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    have = ray.cluster_resources().get("CPU", 0.0)
    if have < needed:  # Ray Data would wait forever for a CPU to decode on
        raise InputError(
            f"the Ray cluster has {have:g} CPU(s); {actors} actor(s) x {cpus_per_actor:g} CPU plus {decode_cpus:g} for "
            "decoding need more. Use fewer --actors or a smaller --cpus-per-actor."
        )
    if gpus_per_actor > 0 and ray.cluster_resources().get("GPU", 0.0) < actors * gpus_per_actor:
        raise InputError(
            f"the Ray cluster has {ray.cluster_resources().get('GPU', 0.0):g} GPU(s); {actors} actor(s) x "
            f"{gpus_per_actor:g} GPU need more. Use fewer --actors or a fractional --gpus-per-actor."
        )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    # at least two blocks per actor, so that every actor gets work and decoding overlaps explaining
    blocks = min(len(pending), max(2 * actors, math.ceil(len(pending) / settings["batch_size"])))
    ds = ray.data.from_items([{"path": p} for p in pending], override_num_blocks=blocks)
    ds = ds.map_batches(
        _decode_batch,
        batch_format="pyarrow",
        batch_size=settings["batch_size"],
        fn_kwargs={"draft": draft, "max_pixels": settings["max_pixels"], "cwd": os.getcwd()},
        # tasks that ask for other resources than the actors are not fused into them: decoding runs ahead, in parallel
        num_cpus=decode_cpus,
    )
    ds = ds.map_batches(
        _ExplainActor,
        batch_format="pyarrow",
        batch_size=settings["batch_size"],
        fn_constructor_kwargs={"settings": settings, "threads": max(1, int(cpus_per_actor))},
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor,
    )
    counts = {"explained": 0, "errors": 0, "parts_written": 0}
    buffer: list[dict[str, Any]] = []

    def flush(rows: list[dict[str, Any]]) -> None:
        _write_part(out, rows)
        counts["parts_written"] += 1
        counts["errors"] += sum(r["error"] is not None for r in rows)
        counts["explained"] += sum(r["error"] is None for r in rows)

    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        buffer.extend(batch.to_pylist())
        while len(buffer) >= part_size:
            flush(buffer[:part_size])
            del buffer[:part_size]
    if buffer:
        flush(buffer)
    return counts
