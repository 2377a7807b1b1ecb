"""Artifacts record random weights and warn on every load; artifact folders get the user's umask, not 0o700."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import warnings
from pathlib import Path

import pytest

from engine import Engine
from engine.artifact import WEIGHTS, load_artifact, write_artifact
from engine.cli import main
from engine.create import create_artifact
from engine.errors import RandomWeightsWarning

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class _Umask:
    def __init__(self, mask: int):
        self.mask = mask

    def __enter__(self):
        self.old = os.umask(self.mask)

    def __exit__(self, *exc):
        os.umask(self.old)


@pytest.fixture(scope="module")
def random_art(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("random")
    with pytest.warns(RandomWeightsWarning), _Umask(0o022):
        return create_artifact("vit-reciprocam", "timm/vit_tiny_patch16_224", tmp / "art", source="random")


def test_random_weights_are_recorded_and_every_load_warns(random_art):
    manifest = json.loads((random_art.path / "manifest.json").read_text())
    assert manifest["weights_source"] == "random" and random_art.random_weights
    for _ in range(2):  # every load, not the first only
        with pytest.warns(RandomWeightsWarning, match=r"has random weights .*classes and scores are meaningless"):
            load_artifact(random_art.path)
    with pytest.warns(RandomWeightsWarning, match=str(random_art.path)) as record:
        Engine.load(random_art.path, backend="torch")
    assert len([w for w in record if issubclass(w.category, RandomWeightsWarning)]) == 1
    assert issubclass(RandomWeightsWarning, UserWarning)


def test_cli_says_it_once_on_stderr(random_art, capsys):
    assert main(["info", str(random_art.path)]) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1, err
    assert err.startswith(f"xai-engine info: warning: artifact {random_art.path} has random weights")


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")
def test_export_keeps_the_record_warns_once_and_follows_the_umask(random_art, tmp_path, capsys):
    out = tmp_path / "exported"
    with _Umask(0o022):
        assert main(["export", str(random_art.path), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("has random weights") == 1, err  # the source and the new artifact are both loaded: one line
    assert json.loads((out / "manifest.json").read_text())["weights_source"] == "random"
    with pytest.warns(RandomWeightsWarning):
        Engine.load(out, backend="onnxruntime")
    assert _mode(out) == 0o755
    assert {p.name: _mode(p) for p in out.iterdir()} == dict.fromkeys(("manifest.json", WEIGHTS, "model.onnx"), 0o644)


def test_package_weights_do_not_warn(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomWeightsWarning)
        art = create_artifact("reciprocam", "timm/tf_efficientnet_lite0", tmp_path / "lite0", source="package")
        assert art.weights_source == "package" and not art.random_weights
        load_artifact(art.path)
        Engine.load(art.path, backend="torch")
        load_artifact("default")  # made before the record existed: no weights_source, no warning


@pytest.mark.parametrize(("umask", "folder", "files"), [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_artifact_folders_follow_the_umask(random_art, tmp_path, umask, folder, files):
    with _Umask(umask), pytest.warns(RandomWeightsWarning):
        art = write_artifact(random_art.manifest, tmp_path / "a", {WEIGHTS: random_art.file(WEIGHTS)})
        assert _mode(art.path) == folder, oct(_mode(art.path))  # not mkdtemp's 0o700
        assert {p.name: _mode(p) for p in art.path.iterdir()} == {"manifest.json": files, WEIGHTS: files}
        # replacing an earlier artifact in place: the same modes
        write_artifact(random_art.manifest, tmp_path / "a", {WEIGHTS: random_art.file(WEIGHTS)})
        assert _mode(art.path) == folder
    assert _mode(random_art.path) == 0o755, "create_artifact writes through the same function"
