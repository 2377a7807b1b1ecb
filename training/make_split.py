"""Write a fixed, seeded, stratified train / val / test split of a labelled dataset (JSON, see training/splits.py).

Example::

    python training/make_split.py --data kahikatea --val 0.2 --test 0.2 --seed 0 \\
        --out benchmarks/results/ala-kahikatea/split.json
    python training/make_split.py --data cub --data-root CUB_200_2011 --test-split test --val 994 --out cub.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: the `training` package

from engine.errors import EngineError  # noqa: E402
from training.splits import stratified_split, write_split  # noqa: E402


def _fraction_or_count(text: str) -> float | int:
    value = float(text)
    return int(value) if value >= 1 and value.is_integer() else value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make_split.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="engine.data dataset name (kahikatea, cub, folder, ...)")
    p.add_argument("--data-root", default=None, help="dataset folder (default: the dataset's folder in ../shared)")
    p.add_argument(
        "--val",
        type=_fraction_or_count,
        default=0.2,
        help="a fraction of each class (0.2) or a total count (994), stratified; default 0.2",
    )
    p.add_argument("--test", type=_fraction_or_count, default=0.2, help="likewise for the test part; default 0.2")
    p.add_argument(
        "--test-split",
        default=None,
        help="take the dataset's own split of this name as the test part (CUB: test; with --val 994 this "
        "is the ALA paper's 5,000 / 994 / 5,794)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="the JSON file to write")
    args = p.parse_args(argv)
    from engine.data import open_dataset

    try:
        ds = open_dataset(args.data, args.data_root)
        doc = stratified_split(ds, val=args.val, test=args.test, seed=args.seed, test_split=args.test_split)
        path = write_split(doc, args.out)
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sizes = ", ".join(f"{part} {len(doc[part])} {doc['counts'][part]}" for part in ("train", "val", "test"))
    print(f"wrote {path}: {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
