"""benchmarks/latency.py on an artifact folder (``--artifact``): its classify and explain graphs open on a backend."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import latency  # noqa: E402

from engine.backends import open_backend  # noqa: E402
from engine.create import create_artifact  # noqa: E402


def test_an_artifacts_classify_graph_opens_with_the_artifacts_input_size(tmp_path):
    art = create_artifact(
        "ala", "timm/tf_efficientnet_lite0", tmp_path / "a", source="random", input_size=64,
        options={"dim": 16, "depth": 4, "heads": 2, "pb_channels": 8, "num_classes": 3},
    )  # fmt: skip
    spec = latency.artifact_spec(str(art.path))
    assert spec.key == "ala:a" and spec.method == "ala"
    model = latency.build_model(spec, seed=0, chunk_size=1)
    x = np.zeros((2, 3, 64, 64), np.float32)
    classify = open_backend("torch", model.graphs["classify"], device="cpu")
    assert classify.classify(x).shape == (2, 1000)  # the encoder's own classifier: the latency baseline
    logits, sal = open_backend("torch", model.graphs["fast"], device="cpu").infer(x)
    assert logits.shape == (2, 3) and sal.shape == (2, 4, 4)
