"""Triton model repositories (export/to_triton.py, engine/triton.py).

The configs are parsed into Triton's own ModelConfig protobuf (tritonclient[grpc], in the dev extra) and checked
against the graphs; the graphs are run with onnxruntime / OpenVINO on batches made by engine's Preprocessor with the
shapes the config declares. The Triton server itself is not run: it ships as a container.
"""

from __future__ import annotations

import importlib.util
import json
import os
import py_compile
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from engine.artifact import BUILTIN_DIR, DEFAULT_EXPORTED_BUILTIN, current_umask, load_artifact, write_artifact
from engine.config import PreprocessConfig
from engine.errors import BackendUnavailableError
from engine.preprocess import Preprocessor, load_image
from engine.requires import INSTALL_TORCH
from engine.triton import (
    CLIENT,
    CONFIG,
    LABELS,
    PREPROCESS,
    TENSORRT_PLAN,
    TritonConfigError,
    main,
    model_config_available,
    model_config_pb2,
    parse_config,
    validate_config,
    write_triton_repository,
)

ROOT = Path(__file__).resolve().parents[1]
ONNX_BUILTIN = BUILTIN_DIR / DEFAULT_EXPORTED_BUILTIN
NAME = DEFAULT_EXPORTED_BUILTIN
NUMPY = {"TYPE_FP32": np.float32, "TYPE_INT64": np.int64}


# --- fixtures ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def onnx_repo(tmp_path_factory) -> Path:
    """The ONNX built-in written as a Triton model (no torch needed): REPO/<name>/."""
    repo = tmp_path_factory.mktemp("repo")
    model = write_triton_repository(load_artifact(ONNX_BUILTIN), repo)
    assert model.validated and model.name == NAME and model.path == repo / NAME
    return model.path


@pytest.fixture(scope="module")
def tiny_raw(tmp_path_factory):
    """A tiny random artifact with weights only (no exported graph): 5 classes, 64x64."""
    from engine.create import create_artifact

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RandomWeightsWarning: random weights are the point here
        return create_artifact(
            "reciprocam", "timm/test_resnet", tmp_path_factory.mktemp("tiny") / "tiny", source="random",
            num_classes=5, input_size=64, class_names=["ant", "bee", "cat", "dog", "eel"],
        )  # fmt: skip


def _images(example_images, n=3):
    return [p for p in example_images if p.stem != "kahikatea_aerial"][:n]


def _full_shape(t, batch: int) -> list[int]:
    """The request shape Triton accepts for a config tensor (max_batch_size > 0: [batch] + dims)."""
    return [batch, *t.dims]


def _model_view(t, array: np.ndarray) -> np.ndarray:
    """What the backend hands the model: the request tensor with the config's reshape applied."""
    return array.reshape(array.shape[0], *t.reshape.shape) if t.HasField("reshape") else array


def _check_against_runtime(cfg, run, pre: PreprocessConfig, images) -> None:
    """Feed tensors shaped as the config declares to the graph and compare every output with the config."""
    pb2 = model_config_pb2()
    inputs = {t.name: t for t in cfg.input}
    batch, _ = Preprocessor(pre)([load_image(p) for p in images])
    n = len(batch)
    assert list(batch.shape) == _full_shape(inputs["image"], n)
    assert batch.dtype == NUMPY[pb2.DataType.Name(inputs["image"].data_type)]
    target = np.full(_full_shape(inputs["target"], n), -1, dtype=NUMPY[pb2.DataType.Name(inputs["target"].data_type)])
    outs = run({"image": _model_view(inputs["image"], batch), "target": _model_view(inputs["target"], target)})
    for t in cfg.output:
        got = outs[t.name]
        dims = [n, *(t.reshape.shape if t.HasField("reshape") else t.dims)]
        assert len(got.shape) == len(dims) and all(d in (-1, g) for d, g in zip(dims, got.shape, strict=True)), (
            t.name,
            got.shape,
            dims,
        )
        assert got.dtype == NUMPY[pb2.DataType.Name(t.data_type)], (t.name, got.dtype)


def _ort_run(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return lambda feeds: dict(zip(names, sess.run(names, feeds), strict=True))


# --- the ONNX built-in ------------------------------------------------------------------------------------------------
def test_tritonclient_is_installed_so_ci_validates():
    assert model_config_available(), 'tritonclient[grpc] is in the dev extra: pip install -e ".[dev]"'


def test_onnx_config_parses_and_matches_the_graph_run_by_onnxruntime(onnx_repo, example_images):
    assert sorted(p.name for p in onnx_repo.iterdir()) == sorted(["1", CLIENT, CONFIG, LABELS, PREPROCESS])
    assert [p.name for p in (onnx_repo / "1").iterdir()] == ["model.onnx"]
    report = validate_config(onnx_repo)
    cfg = report.config
    assert report.graph is not None and "model.onnx" in report.graph.source
    assert cfg.name == NAME and cfg.backend == "onnxruntime" and cfg.max_batch_size == 8
    assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds == 100
    assert [(g.count, model_config_pb2().ModelInstanceGroup.Kind.Name(g.kind)) for g in cfg.instance_group] == [
        (1, "KIND_CPU")
    ]
    io = {t.name: (list(t.dims), list(t.reshape.shape) if t.HasField("reshape") else None) for t in cfg.input}
    io.update({t.name: (list(t.dims), list(t.reshape.shape) if t.HasField("reshape") else None) for t in cfg.output})
    assert io == {
        "image": ([3, 224, 224], None),
        "target": ([1], []),
        "logits": ([1000], None),
        "saliency": ([7, 7], None),
    }
    art = load_artifact(ONNX_BUILTIN)
    assert (onnx_repo / LABELS).read_text(encoding="utf-8").splitlines() == art.class_names
    assert cfg.output[0].label_filename == LABELS
    pre = PreprocessConfig.from_dict(json.loads((onnx_repo / PREPROCESS).read_text()))
    assert pre == art.preprocess
    assert (onnx_repo / "1" / "model.onnx").read_bytes() == art.file("model.onnx").read_bytes()
    _check_against_runtime(cfg, _ort_run(onnx_repo / "1" / "model.onnx"), pre, _images(example_images))


def _load_client(model_dir: Path):
    spec = importlib.util.spec_from_file_location(
        f"client_example_{model_dir.name.replace('-', '_')}", model_dir / CLIENT
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_client_example_sends_the_batch_engine_uses_and_maps_back_like_engine(onnx_repo, example_images, tmp_path):
    """The written client compiles; its preprocessing makes exactly Engine's batch; its request has the config's
    names, shapes and types; with the graph run as Triton would (target reshaped [B, 1] -> [B]) its results are
    Engine's. No server is contacted."""
    from engine import Engine

    py_compile.compile(str(onnx_repo / CLIENT), doraise=True, cfile=str(tmp_path / "client.pyc"))
    assert (onnx_repo / CLIENT).read_bytes() == (ROOT / "engine" / "triton_client_example.py").read_bytes()
    client = _load_client(onnx_repo)
    info = client.load_model_info(onnx_repo)
    assert info["name"] == NAME and info["max_batch_size"] == 8 and len(info["class_names"]) == 1000
    from PIL import Image

    big = tmp_path / "big.jpg"  # at least twice the input: Engine (and so the client) decodes it reduced (draft mode)
    Image.open(example_images[0]).convert("RGB").resize((1200, 1000)).save(big, quality=90)
    images = [*_images(example_images), big]
    targets = [None, "orange", None, None]

    engine = Engine.load(ONNX_BUILTIN, backend="onnxruntime", threads=1)
    seen = []
    infer = engine.backend.infer
    engine.backend.infer = lambda x, t: (seen.append((x.copy(), t.copy())), infer(x, t))[1]
    expected = engine.explain(images, target=targets)

    batch, metas, _ = client.make_batch(images, info["preprocess"])
    ids = client.resolve_targets(targets, info["class_names"], len(images))
    assert len(seen) == 1 and np.array_equal(batch, seen[0][0]) and batch.dtype == np.float32
    assert np.array_equal(ids, seen[0][1]) and ids.tolist() == [-1, 950, -1, -1]

    cfg = parse_config((onnx_repo / CONFIG).read_text())
    inputs = {t.name: t for t in cfg.input}
    grpc = pytest.importorskip("tritonclient.grpc")  # in the dev extra; the example's default is tritonclient.http
    request, outputs = client.build_request(grpc, batch, ids)
    for inp in request:
        t = inputs[inp.name()]
        assert inp.shape() == _full_shape(t, len(images))
        assert "TYPE_" + inp.datatype() == model_config_pb2().DataType.Name(t.data_type)
    assert [o.name() for o in outputs] == [t.name for t in cfg.output]

    run = _ort_run(onnx_repo / "1" / "model.onnx")
    sent_target = ids.reshape(-1, 1)  # what build_request sends
    outs = run({"image": batch, "target": _model_view(inputs["target"], sent_target)})
    got = client.explain(outs["logits"], outs["saliency"], metas, ids, info["class_names"])
    for g, e in zip(got, expected, strict=True):
        assert (g["class_id"], g["class_name"], g["target"], g["target_name"]) == (
            e.class_id,
            e.class_name,
            e.target,
            e.target_name,
        )
        assert g["score"] == pytest.approx(e.score, abs=1e-5)
        assert [c for c, _, _ in g["topk"]] == [c for c, _, _ in e.topk]
        assert g["saliency"].shape == e.saliency.shape and g["saliency"].dtype == np.float32
        np.testing.assert_allclose(g["saliency"], e.saliency, atol=1e-4)
    engine.close()


class _FakeTritonHttp:
    """Stands in for ``tritonclient.http`` and a server: checks each request against config.pbtxt as Triton does
    (names, data types, ``[batch] + dims``, batch <= max_batch_size), applies the config's reshape and runs the graph
    with onnxruntime."""

    def __init__(self, model_dir: Path):
        self.cfg = parse_config((model_dir / CONFIG).read_text())
        self.run = _ort_run(model_dir / "1" / "model.onnx")
        self.requests: list[int] = []
        fake = self

        class InferInput:
            def __init__(self, name, shape, datatype):
                self._name, self._shape, self._datatype, self.data = name, list(shape), datatype, None

            def set_data_from_numpy(self, array):
                assert list(array.shape) == self._shape and array.dtype == np.dtype(
                    self._datatype.lower().replace("fp", "float")
                )
                self.data = array

        class InferRequestedOutput:
            def __init__(self, name):
                self.name = name

        class InferenceServerClient:
            def __init__(self, url):
                self.url = url

            def infer(self, model, inputs, outputs):
                return fake.infer(model, inputs, outputs)

        self.InferInput, self.InferRequestedOutput = InferInput, InferRequestedOutput
        self.InferenceServerClient = InferenceServerClient

    def infer(self, model, inputs, outputs):
        pb2 = model_config_pb2()
        assert model == self.cfg.name
        declared = {t.name: t for t in self.cfg.input}
        assert sorted(i._name for i in inputs) == sorted(declared)
        batch = {i.data.shape[0] for i in inputs}
        assert len(batch) == 1 and 1 <= batch.pop() <= self.cfg.max_batch_size
        feeds = {}
        for i in inputs:
            t = declared[i._name]
            assert "TYPE_" + i._datatype == pb2.DataType.Name(t.data_type)
            assert i._shape == _full_shape(t, i._shape[0])
            feeds[i._name] = _model_view(t, i.data)
        self.requests.append(len(feeds["image"]))
        outs = self.run(feeds)
        wanted = {o.name for o in outputs}

        class Result:
            def as_numpy(self, name):
                assert name in wanted
                return outs[name]

        return Result()


def test_client_example_main_end_to_end_against_a_stand_in_server(tmp_path, example_images, capsys):
    from engine import Engine

    model = write_triton_repository(load_artifact(ONNX_BUILTIN), tmp_path / "repo", name="lite0", max_batch_size=2)
    client = _load_client(model.path)
    fake = _FakeTritonHttp(model.path)
    client.client_module = lambda protocol="http": fake
    images = _images(example_images)
    assert client.main([*map(str, images), "--out", str(tmp_path / "maps"), "--target", "orange"]) == 0
    assert fake.requests == [2, 1]  # max_batch_size from config.pbtxt
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    with Engine.load(ONNX_BUILTIN, backend="onnxruntime", threads=1) as engine:
        expected = engine.explain(images, target="orange")
    for line, exp, path in zip(lines, expected, images, strict=True):
        assert line["source"] == str(path) and line["class_id"] == exp.class_id and line["target"] == 950
        assert line["target_name"] == "orange" and line["crop_box"] == pytest.approx(list(exp.crop_box))
        np.testing.assert_allclose(np.load(tmp_path / "maps" / f"{path.stem}.npy"), exp.saliency, atol=1e-4)


def test_an_exported_artifact_is_written_without_torch(tmp_path):
    """The edge install can write (and validate) the repository for an exported artifact: torch is never imported."""
    code = (
        "import sys\n"
        "from engine.triton import main\n"
        f"rc = main([{str(ONNX_BUILTIN)!r}, '--out', {str(tmp_path / 'repo')!r}, '--name', 'edge'])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "sys.exit(rc)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "parsed into Triton's ModelConfig" in run.stdout and "nvcr.io/nvidia/tritonserver" in run.stdout
    assert "not run here" in run.stdout
    assert validate_config(tmp_path / "repo" / "edge").config.name == "edge"


# --- OpenVINO, exported first from a raw artifact ---------------------------------------------------------------------
def test_openvino_model_from_a_raw_artifact_is_exported_first(tiny_raw, tmp_path, example_images, capsys):
    ov = pytest.importorskip("openvino")
    assert not tiny_raw.has("model.onnx")
    repo = tmp_path / "repo"
    rc = main([str(tiny_raw.path), "--out", str(repo), "--backend", "openvino", "--max-batch", "4"])
    assert rc == 0, capsys.readouterr().err
    model_dir = repo / "tiny"
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == ["model.bin", "model.xml"]
    report = validate_config(model_dir)
    cfg = report.config
    assert "model.xml (openvino)" in report.graph.source
    assert cfg.backend == "openvino" and cfg.max_batch_size == 4 and not cfg.platform
    assert {k: v.string_value for k, v in cfg.parameters.items()} == {"ENABLE_BATCH_PADDING": "YES"}
    dims = {t.name: list(t.dims) for t in [*cfg.input, *cfg.output]}
    assert dims == {"image": [3, 64, 64], "target": [1], "logits": [5], "saliency": [2, 2]}
    assert (model_dir / LABELS).read_text().splitlines() == ["ant", "bee", "cat", "dog", "eel"]
    pre = PreprocessConfig.from_dict(json.loads((model_dir / PREPROCESS).read_text()))
    assert pre == tiny_raw.preprocess

    compiled = ov.Core().compile_model(str(model_dir / "1" / "model.xml"), "CPU")

    def run(feeds):
        res = compiled(feeds)
        return {o.get_any_name(): res[o] for o in compiled.outputs}

    _check_against_runtime(cfg, run, pre, _images(example_images))


# --- refusals ---------------------------------------------------------------------------------------------------------
def _copy_model(src: Path, dst_repo: Path) -> Path:
    dst = dst_repo / src.name
    shutil.copytree(src, dst, copy_function=os.link)  # hard links: the 19 MB graph is not copied
    (dst / CONFIG).unlink()
    shutil.copyfile(src / CONFIG, dst / CONFIG)
    return dst


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "dims: [ 7, 7 ]",
            "dims: [ 7, 8 ]",
            "output 'saliency' has dims [ 7, 8 ] but model.onnx (onnx) makes saliency",
        ),
        ("dims: [ 7, 7 ]", "dims: [ 7, 8 ]", "so it must have dims [ 7, 7 ]"),
        ("dims: [ 3, 224, 224 ]", "dims: [ 224, 224, 3 ]", "input 'image' has dims [ 224, 224, 3 ]"),
        ("dims: [ 1000 ]", "dims: [ -1 ]", "output 'logits' has dims [ -1 ]"),
        ("    reshape: { shape: [ ] }\n", "", "dims: [ 1 ] with reshape: { shape: [ ] }"),
        ("data_type: TYPE_INT64", "data_type: TYPE_INT32", "input 'target' has data_type TYPE_INT32"),
        ("max_batch_size: 8", "max_batch_size: 0", "max_batch_size is 0"),
        ('name: "target"', 'name: "class"', "missing ['target']"),
        (f'name: "{NAME}"', 'name: "other"', 'name is "other" but the model folder is'),
        ("kind: KIND_CPU", "kind: KIND_CPUS", "not a valid Triton ModelConfig"),
        ("max_batch_size: 8", "max_batch: 8", "not a valid Triton ModelConfig"),
        ('backend: "onnxruntime"', 'backend: "openvino"', "lacks model.xml, model.bin"),
        ('backend: "onnxruntime"', 'platform: "tensorrt_plan"', "lacks model.plan"),
    ],
)
def test_a_tampered_config_is_refused_with_what_it_should_say(onnx_repo, tmp_path, old, new, expected):
    model_dir = _copy_model(onnx_repo, tmp_path)
    text = (model_dir / CONFIG).read_text()
    assert old in text
    (model_dir / CONFIG).write_text(text.replace(old, new, 1))
    with pytest.raises(TritonConfigError) as info:
        validate_config(model_dir)
    assert expected in str(info.value), str(info.value)


def test_a_labels_file_of_the_wrong_length_is_refused(onnx_repo, tmp_path):
    model_dir = _copy_model(onnx_repo, tmp_path)
    (model_dir / LABELS).unlink()
    (model_dir / LABELS).write_text("a\nb\n")
    with pytest.raises(TritonConfigError, match="labels.txt has 2 lines for 1000 classes"):
        validate_config(model_dir)


def test_tensorrt_without_a_plan_fails_at_once_naming_the_trt_export(tmp_path, capsys):
    rc = main([str(ONNX_BUILTIN), "--out", str(tmp_path / "repo"), "--backend", "tensorrt"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("export/to_triton.py: error: ")
    assert TENSORRT_PLAN in err and "python export/to_trt.py CKPT" in err and "GPU machine" in err
    assert not (tmp_path / "repo").exists()


def test_tensorrt_with_a_plan_in_the_manifest(tmp_path):
    """A plan listed by the manifest is served with platform tensorrt_plan on GPU instances; its shapes come from
    the io the export recorded (a plan cannot be read here)."""
    src = load_artifact(ONNX_BUILTIN)
    plan = tmp_path / "fake.plan"
    plan.write_bytes(b"not a real TensorRT engine")
    art = write_artifact(src.manifest, tmp_path / "with-plan", {TENSORRT_PLAN: plan})
    assert art.has(TENSORRT_PLAN) and not art.has("model.onnx")
    model = write_triton_repository(art, tmp_path / "repo", backend="tensorrt", max_batch_size=16)
    cfg = model.report.config
    assert cfg.platform == "tensorrt_plan" and not cfg.backend and cfg.max_batch_size == 16
    assert [model_config_pb2().ModelInstanceGroup.Kind.Name(g.kind) for g in cfg.instance_group] == ["KIND_GPU"]
    assert {t.name: list(t.dims) for t in cfg.output} == {"logits": [1000], "saliency": [7, 7]}
    assert model.report.graph is None and "cannot be read here" in model.report.notes[0]
    assert (model.path / "1" / TENSORRT_PLAN).read_bytes() == plan.read_bytes()
    with pytest.raises(TritonConfigError, match="runs KIND_GPU instances, not KIND_CPU"):
        write_triton_repository(art, tmp_path / "repo2", backend="tensorrt", kind="KIND_CPU")


def test_an_existing_model_folder_is_replaced_only_with_force(tmp_path):
    art = load_artifact(ONNX_BUILTIN)
    repo = tmp_path / "repo"
    (repo / "other-model").mkdir(parents=True)  # other models in the repository are left alone
    first = write_triton_repository(art, repo, name="m")
    with pytest.raises(TritonConfigError, match="already exists; pass --force"):
        write_triton_repository(art, repo, name="m", max_batch_size=2)
    assert "max_batch_size: 8" in (first.path / CONFIG).read_text()
    write_triton_repository(art, repo, name="m", max_batch_size=2, force=True)
    assert "max_batch_size: 2" in (first.path / CONFIG).read_text()
    assert sorted(p.name for p in repo.iterdir()) == ["m", "other-model"]  # no temporary folder left behind
    mask = current_umask()
    for p in [first.path, *first.path.rglob("*")]:
        want = (0o777 if p.is_dir() else 0o666) & ~mask
        assert p.stat().st_mode & 0o777 == want, (p, oct(p.stat().st_mode & 0o777))


def test_a_failed_validation_writes_nothing(tmp_path, monkeypatch):
    import engine.triton as triton

    def refuse(*args, **kwargs):
        raise TritonConfigError("refused")

    monkeypatch.setattr(triton, "validate_config", refuse)
    with pytest.raises(TritonConfigError, match="refused"):
        write_triton_repository(load_artifact(ONNX_BUILTIN), tmp_path / "repo", validate=True)
    assert list((tmp_path / "repo").iterdir()) == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--max-batch", "0"], "--max-batch must be >= 1"),
        (["--instances", "0"], "--instances must be >= 1"),
        (["--max-queue-delay-us", "-1"], "--max-queue-delay-us must be >= 0"),
        (["--backend", "openvino", "--kind", "KIND_GPU"], "openvino backend runs KIND_CPU instances, not KIND_GPU"),
        (["--name", "a/b"], "is not a plain folder name"),
    ],
)
def test_bad_options_exit_2_with_a_message(tmp_path, capsys, args, expected):
    assert main([str(ONNX_BUILTIN), "--out", str(tmp_path / "repo"), *args]) == 2
    assert expected in capsys.readouterr().err


def test_exporting_without_torch_says_how_to_get_it(tiny_raw, tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a, **k: None if n == "torch" else real(n, *a, **k))
    assert main([str(tiny_raw.path), "--out", str(tmp_path / "repo")]) == 2
    err = capsys.readouterr().err
    assert "exporting model.onnx for a Triton model" in err and "needs torch" in err and INSTALL_TORCH in err


def test_validation_without_tritonclient_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)
    assert not model_config_available()
    with pytest.raises(BackendUnavailableError, match=r'pip install "tritonclient\[grpc\]"'):
        model_config_pb2()
    model = write_triton_repository(load_artifact(ONNX_BUILTIN), tmp_path / "repo")  # validate=None: skipped
    assert not model.validated and (model.path / CONFIG).is_file()


def test_the_script_answers_help():
    result = subprocess.run(
        [sys.executable, "export/to_triton.py", "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0 and "ckpt" in result.stdout.lower() and "--backend" in result.stdout
    assert "not run here" in result.stdout and "nvcr.io/nvidia/tritonserver" in result.stdout
