"""Regenerate the golden saliency maps: ``python tests/golden/regenerate.py`` (torch, fp32, CPU).

For each built-in artifact and each photo in ``examples/``: the map at the explainer's resolution
(``Explanation.saliency_lowres``) as ``<artifact>/<photo stem>.npy`` (float32), and the predicted class and score in
``<artifact>/classes.json``. ``tests/test_golden.py`` checks every installed backend against them. Regenerate only
when a change is meant to change the maps, and say why in the commit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engine import Engine
from engine.artifact import builtin_names
from engine.preprocess import list_image_files

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parents[1] / "examples"


def main() -> None:
    photos = list_image_files(EXAMPLES)
    for name in builtin_names():
        engine = Engine.load(name, backend="torch", precision="fp32", device="cpu", resize_mode="artifact")
        folder = HERE / name
        folder.mkdir(exist_ok=True)
        classes = {}
        for photo, exp in zip(photos, engine.explain(photos), strict=True):
            np.save(folder / f"{photo.stem}.npy", exp.saliency_lowres.astype(np.float32), allow_pickle=False)
            classes[photo.name] = {"class_id": exp.class_id, "score": round(exp.score, 6)}
        (folder / "classes.json").write_text(json.dumps(classes, indent=1) + "\n")
        print(f"{name}: {len(photos)} maps -> {folder}")


if __name__ == "__main__":
    main()
