"""Golden saliency maps: every installed backend x every built-in method reproduces the committed maps
(``tests/golden``, made by torch fp32 with ``tests/golden/regenerate.py``) on the photos in ``examples/``.

The maps were checked bit-identical to those of the code before the backend/registry refactor (db3ff5d).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from engine import Engine
from engine.artifact import builtin_names, load_artifact
from engine.backends import open_backend
from engine.graph import graph_from_artifact
from engine.preprocess import list_image_files

GOLDEN = Path(__file__).resolve().parent / "golden"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TOL = {"fp32": 1e-4}  # per precision: max |map - golden| (maps in [0, 1])
BACKENDS = [
    "torch",
    pytest.param("onnxruntime", marks=pytest.mark.skipif(not importlib.util.find_spec("onnxruntime"), reason="no ORT")),
    pytest.param("openvino", marks=pytest.mark.skipif(not importlib.util.find_spec("openvino"), reason="no OpenVINO")),
]


def test_every_builtin_artifact_has_golden_maps():
    photos = {p.stem for p in list_image_files(EXAMPLES)}
    assert photos and set(builtin_names()) == {p.name for p in GOLDEN.iterdir() if p.is_dir()}
    for name in builtin_names():
        assert {p.stem for p in (GOLDEN / name).glob("*.npy")} == photos, name


@pytest.fixture(scope="module")
def graphs():
    return {name: graph_from_artifact(load_artifact(name)) for name in builtin_names()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("artifact", builtin_names())
def test_backend_reproduces_the_golden_maps(graphs, artifact, backend):
    art = load_artifact(artifact)
    # the in-memory graph opened on the backend (ONNX Runtime and OpenVINO export it to ONNX first)
    engine = Engine(art, open_backend(backend, graphs[artifact], precision="fp32"), resize_mode="artifact")
    photos = list_image_files(EXAMPLES)
    classes = json.loads((GOLDEN / artifact / "classes.json").read_text())
    for photo, exp in zip(photos, engine.explain(photos), strict=True):
        golden = np.load(GOLDEN / artifact / f"{photo.stem}.npy", allow_pickle=False)
        assert exp.saliency_lowres.shape == golden.shape, photo.name
        gap = float(np.abs(exp.saliency_lowres - golden).max())
        assert gap <= TOL["fp32"], f"{artifact} on {backend}, {photo.name}: max |map - golden| = {gap:.2e}"
        assert exp.class_id == classes[photo.name]["class_id"], photo.name
        assert exp.score == pytest.approx(classes[photo.name]["score"], abs=1e-4)
