"""One registry of backend descriptors drives auto-selection, export formats, CLI choices, hints and versions; a new
backend is one backend class plus one descriptor (shown here with a toy backend)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import Engine
from engine.artifact import load_artifact
from engine.backends import BACKENDS, BackendSpec, export_formats, select_backend
from engine.backends.base import Backend
from engine.backends.registry import format_chain, spec_writing
from engine.cli import build_parser
from engine.create import create_artifact
from engine.errors import ArtifactError
from engine.export import export_artifact


def _choices(parser, command: str, option: str) -> list[str]:
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return list(next(a for a in sub._actions if option in a.option_strings).choices)


def test_the_registry_drives_formats_choices_and_hints():
    assert list(export_formats()) == ["onnx", "openvino"]
    assert [s.name for s in format_chain("openvino")] == ["onnxruntime", "openvino"]
    assert spec_writing("model.bin").name == "openvino" and spec_writing("weights.safetensors") is None
    parser = build_parser()
    assert _choices(parser, "explain", "--backend") == ["auto", *BACKENDS]
    assert _choices(parser, "export", "--format") == list(export_formats())
    assert set(_choices(parser, "explain", "--precision")) == {p for s in BACKENDS.values() for p in s.precisions}


# --- a toy backend: the file a new runtime would add, plus its descriptor ---------------------------------------


class EchoBackend(Backend):
    """Runs the torch graph but only opens artifacts that carry its file (stands in for a new runtime)."""

    name = "echo"

    def _open_impl(self) -> None:
        from engine.graph import graph_from_artifact

        spec = json.loads(self.artifact.file("model.echo").read_text())
        assert spec["input_size"] == list(self.input_size)
        self.graph = graph_from_artifact(self.artifact)

    def _run_impl(self, images, targets):
        with torch.no_grad():
            logits, sal = self.graph(torch.from_numpy(images), torch.from_numpy(targets))
        return logits.numpy(), sal.numpy()


def echo_from_module(module, path: Path, input_size) -> Path:
    Path(path).write_text(json.dumps({"input_size": list(input_size)}))
    return Path(path)


ECHO = BackendSpec(
    name="echo",
    cls="xai_test_echo:EchoBackend",
    package="json",  # the runtime package; 'json' is always importable
    extra="xai-engine[echo]",
    reads=("model.echo",),
    export_format="echo",
    writes=("model.echo",),
    build="xai_test_echo:echo_from_module",
    versions=("numpy",),
    script="export/to_echo.py",
    auto_rank=5,
)


@pytest.fixture
def echo_registered(monkeypatch):
    module = types.ModuleType("xai_test_echo")
    module.EchoBackend, module.echo_from_module = EchoBackend, echo_from_module
    monkeypatch.setitem(sys.modules, "xai_test_echo", module)
    monkeypatch.setitem(BACKENDS, "echo", ECHO)  # the one descriptor


def test_a_new_backend_is_one_class_plus_one_descriptor(echo_registered, tmp_path, example_images):
    src = create_artifact("vit-reciprocam", "timm/vit_tiny_patch16_224", tmp_path / "src", source="random")
    assert select_backend(src) == "torch"  # no echo file yet
    with pytest.raises(ArtifactError, match="python export/to_echo.py"):  # the export hint comes from the descriptor
        Engine.load(src.path, backend="echo")
    art = export_artifact(src, tmp_path / "echo", ("echo",))
    assert art.has("model.echo") and art.manifest["versions"]["numpy"] == np.__version__
    assert select_backend(art) == "echo"  # auto: its rank comes first and the artifact has its file
    assert "echo" in _choices(build_parser(), "explain", "--backend")
    assert "echo" in _choices(build_parser(), "export", "--format")
    engine = Engine.load(load_artifact(art.path))
    exp = engine.explain(example_images[0])
    assert engine.backend_name == "echo" and exp.backend == "echo" and exp.saliency.shape[:2] == exp.image.size[::-1]
