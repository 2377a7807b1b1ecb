"""Fixed, seeded, stratified train / val / test splits, kept in a JSON file that every run on a dataset shares.

A split file names images as :func:`engine.data.image_name` does (POSIX paths relative to the dataset root), so it
travels without the data::

    {"format": 1, "dataset": "kahikatea", "seed": 0, "stratified": true,
     "counts": {"train": {"0": 172, "1": 139}, "val": {...}, "test": {...}},
     "train": ["images/a.jpg", ...], "val": [...], "test": [...]}

Stratified: each class's images are shuffled with the seed and cut at the same fractions, so every part has the
dataset's class balance (up to rounding). ``python training/make_split.py`` writes one; ``--split FILE`` of the
training scripts and the benchmarks reads it.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from engine.data import image_name
from engine.errors import EngineError, InputError
from engine.fileio import atomic_write_text

SPLIT_FORMAT = 1
PARTS = ("train", "val", "test")


class SplitError(EngineError, ValueError):
    """A split file that cannot be used (damaged, or naming images the dataset lacks)."""


def _allocate(value: float, sizes: dict[int, int], what: str) -> dict[int, int]:
    """Per-class counts of one part: a fraction below 1 of each class (rounded), or a total count spread over the
    classes in proportion to their sizes (largest remainders, so the counts add up to the total exactly)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InputError(f"{what} must be a fraction in [0, 1) or a total count >= 0, got {value!r}.")
    if isinstance(value, float) and value < 1:
        return {c: round(value * n) for c, n in sizes.items()}
    if isinstance(value, float) and not value.is_integer():
        raise InputError(f"{what} must be a fraction below 1 or a whole count, got {value!r}.")
    total, n_all = int(value), sum(sizes.values())
    if total > n_all:
        raise InputError(f"{what}={total} is more than the {n_all} images there are.")
    exact = {c: total * n / n_all for c, n in sizes.items()}
    counts = {c: int(v) for c, v in exact.items()}
    for c in sorted(exact, key=lambda c: (counts[c] - exact[c], c))[: total - sum(counts.values())]:
        counts[c] += 1
    return counts


def stratified_split(
    dataset, *, val: float = 0.2, test: float | None = 0.2, seed: int = 0, test_split: str | None = None
) -> dict[str, Any]:
    """Split a labelled ``engine.data`` dataset into train / val / test, class by class.

    Args:
        dataset: an opened dataset (every sample must have a label).
        val: the validation part: a fraction of each class (``0.2``) or a total count (``994``), spread over the
            classes in proportion to their sizes.
        test: the test part, likewise (ignored with ``test_split``).
        seed: the shuffle seed.
        test_split: use the dataset's own split of this name as the test part (e.g. CUB-200-2011's official
            ``test``; the paper's CUB split is ``test_split="test", val=994``: 5,000 train / 994 val / 5,794 test).

    Returns:
        The split document (see the module docstring).

    Raises:
        InputError: unlabelled images, bad fractions, an unknown split, or a class left without training images.
    """
    by_class: dict[int, list[Path]] = defaultdict(list)
    official: set[Path] = set()
    if test_split is not None and test_split not in getattr(dataset, "splits", ()):
        known = list(getattr(dataset, "splits", ())) or "none"
        raise InputError(
            f"the {getattr(dataset, 'name', 'dataset')} dataset has no split {test_split!r} (it has {known})."
        )
    for s in dataset:
        if s.label is None:
            raise InputError(f"{s.path} has no label; a stratified split needs labelled images.")
        if test_split is not None and s.meta.get("split") == test_split:
            official.add(Path(s.path))
            continue
        by_class[int(s.label)].append(Path(s.path))
    sizes = {c: len(v) for c, v in by_class.items()}
    n_val = _allocate(val, sizes, "val")
    n_test = {c: 0 for c in sizes} if test_split is not None else _allocate(test, sizes, "test")
    rng = random.Random(seed)
    root = Path(dataset.root)
    parts: dict[str, list[str]] = {p: [] for p in PARTS}
    counts: dict[str, dict[str, int]] = {p: {} for p in PARTS}
    for label in sorted(by_class):
        paths = sorted(by_class[label])
        rng.shuffle(paths)
        v, t = n_val[label], n_test[label]
        if v + t >= len(paths):
            raise InputError(
                f"class {label} has {len(paths)} images; val={val} and test={test} leave none to train. Lower them."
            )
        cut = {"val": paths[:v], "test": paths[v : v + t], "train": paths[v + t :]}
        for part in PARTS:
            parts[part] += [image_name(p, root) for p in cut[part]]
            counts[part][str(label)] = len(cut[part])
    if test_split is not None:
        labels = {Path(s.path): int(s.label) for s in dataset if Path(s.path) in official}
        parts["test"] = [image_name(p, root) for p in official]
        counts["test"] = {str(c): n for c, n in sorted(Counter(labels.values()).items())}
    return {
        "format": SPLIT_FORMAT,
        "dataset": getattr(dataset, "name", ""),
        "seed": seed,
        "stratified": True,
        "fractions": {"val": val, "test": f"the dataset's {test_split!r} split" if test_split else test},
        "counts": counts,
        **{p: sorted(parts[p]) for p in PARTS},
    }


def write_split(doc: dict[str, Any], path: str | Path) -> Path:
    """Write a split document atomically; returns the path."""
    path = Path(path)
    text = json.dumps(doc, indent=1) + "\n"
    atomic_write_text(path, lambda fh: fh.write(text))
    return path


def read_split(path: str | Path) -> dict[str, Any]:
    """Read and check a split file.

    Raises:
        SplitError: unreadable JSON, another format, missing parts, or an image named in two parts.
    """
    path = Path(path).expanduser()
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SplitError(f"no split file {path}; write one with python training/make_split.py.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SplitError(f"{path} is not a readable split file ({e}); write it again with make_split.py.") from e
    if not isinstance(doc, dict) or doc.get("format") != SPLIT_FORMAT:
        raise SplitError(f"{path} is not a split file of format {SPLIT_FORMAT}; write it again with make_split.py.")
    for part in PARTS:
        names = doc.get(part)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise SplitError(f"{path}: {part!r} must be a list of image names.")
    seen: dict[str, str] = {}
    for part in PARTS:
        for name in doc[part]:
            if name in seen:
                raise SplitError(f"{path}: {name} is in both {seen[name]!r} and {part!r}; a split must not overlap.")
            seen[name] = part
    if not doc["train"]:
        raise SplitError(f"{path} has no training images.")
    return doc


def resolve_split(doc: dict[str, Any], dataset) -> dict[str, list[Path]]:
    """The dataset's image paths of each part of a split document (in the document's order).

    Raises:
        SplitError: the split names images the dataset lacks (another dataset or a changed folder).
    """
    root = Path(dataset.root)
    by_name = {image_name(Path(s.path), root): Path(s.path) for s in dataset}
    out: dict[str, list[Path]] = {}
    for part in PARTS:
        missing = [n for n in doc[part] if n not in by_name]
        if missing:
            raise SplitError(
                f"the split's {part} part names {len(missing)} image(s) the dataset at {root} lacks, e.g. "
                f"{missing[:3]}. Use the split made for this dataset, or make a new one with make_split.py."
            )
        out[part] = [by_name[n] for n in doc[part]]
    return out
