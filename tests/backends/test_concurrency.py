"""One Engine shared by threads: every backend gives each caller the serial result, raises nothing, keeps its memory
flat after warm-up, and leaves the process's warning filters as they were (issue 13).

The 8 threads x 200 calls run on a tiny seeded model (MobileNetV3-Small-0.5 at 128 px, random weights); the real
default model (EfficientNet-Lite0) gets a shorter run on the example photos. Engines run one intra-op thread: on a
2-core machine the concurrency comes from the callers (torch then runs CPUs // 1 workers, at least 2). With more
intra-op threads than ``OMP_NUM_THREADS`` says, torch's MKL and OpenMP thread counts disagree and its forward passes,
serial ones too, were 20-30 times slower on a busy 2-core machine.
"""

from __future__ import annotations

import importlib.util
import io
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import Engine
from engine.artifact import BUILTIN_DIR, DEFAULT_EXPORTED_BUILTIN
from engine.backends.base import default_threads
from engine.create import create_artifact
from engine.errors import RandomWeightsWarning
from engine.export import export_artifact

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
HAS_OV = importlib.util.find_spec("openvino") is not None
BACKENDS = [
    pytest.param("torch"),
    pytest.param("onnxruntime", marks=pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed")),
    pytest.param("openvino", marks=pytest.mark.skipif(not HAS_OV, reason="openvino not installed")),
]
THREADS, CALLS, WARMUP = 8, 200, 20
TOL = 1e-6  # a map against the serial one (every backend gives it bit for bit here; the bound allows for none)
STATUS = Path("/proc/self/status")


def _rss_mb() -> float:
    for line in STATUS.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """The tiny model's artifact per backend: the weights for torch, its ONNX / OpenVINO export for the others."""
    tmp = tmp_path_factory.mktemp("tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        raw = create_artifact(
            "reciprocam",
            "timm/mobilenetv3_small_050",
            tmp / "raw",
            source="random",
            options={"impl": "reference"},  # its pooled head has no fast form
            num_classes=10,
            class_names=[f"class {i}" for i in range(10)],
            input_size=128,
        )
        formats = ("onnx", "openvino") if HAS_OV else ("onnx",)
        exported = export_artifact(raw, tmp / "exported", formats) if HAS_ORT or HAS_OV else None
    return {"torch": raw.path, "onnxruntime": exported and exported.path, "openvino": exported and exported.path}


@pytest.fixture(scope="module")
def small_photos(example_images) -> list[bytes]:
    """The example photos as small JPEG files (at most 96 px a side): the decode path runs, quickly."""
    out = []
    for path in example_images:
        image = Image.open(path).convert("RGB")
        image.thumbnail((96, 96))
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


@pytest.fixture
def restore_torch_threads():
    """Loading a torch backend sets torch's process-wide intra-op thread count; the next tests get theirs back."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _load(path, backend: str, **kwargs) -> Engine:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return Engine.load(path, backend=backend, **kwargs)


def _hammer(engine: Engine, photos: list, serial: list, threads: int, calls: int):
    """``threads`` threads, started together, each explaining ``calls`` photos in turn on the one engine.

    Returns the errors (as text), the calls whose class or map differ from the serial ones, and the RSS (MB) after
    each call in the order the calls ended.
    """
    errors, wrong, rss = [], [], []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def worker(k: int) -> None:
        start.wait()
        for i in range(calls):
            j = (k + i) % len(photos)
            same = True
            try:
                got = engine.explain(photos[j])
                want = serial[j]
                same = (
                    got.class_id == want.class_id
                    and got.saliency.shape == want.saliency.shape
                    and float(np.abs(got.saliency - want.saliency).max()) <= TOL
                )
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
            sample = _rss_mb()
            with lock:
                rss.append(sample)
                if not same:
                    wrong.append(j)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    return errors, wrong, rss


def _check(errors: list[str], wrong: list[int], total: int) -> None:
    assert not errors, f"{len(errors)} of {total} concurrent calls failed, e.g. {errors[0]}"
    assert not wrong, f"{len(wrong)} of {total} concurrent calls differ from the serial result (photos {wrong[:10]})"


@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_share_one_engine(backend, tiny, small_photos, restore_torch_threads):
    engine = _load(tiny[backend], backend, threads=1)
    ran_on = set()  # the threads that ran the torch graph
    if backend == "torch":
        engine.backend.graph.register_forward_pre_hook(lambda *_: ran_on.add(threading.get_ident()))
    serial = [engine.explain(p) for p in small_photos]
    filters = list(warnings.filters)
    # warm-up: per-thread state and allocator high-water marks settle before memory is watched
    errors, wrong, _ = _hammer(engine, small_photos, serial, THREADS, WARMUP)
    _check(errors, wrong, THREADS * WARMUP)
    errors, wrong, rss = _hammer(engine, small_photos, serial, THREADS, CALLS)
    _check(errors, wrong, THREADS * CALLS)
    # load_image's catch_warnings blocks, interleaved by threads, used to leave a bomb-warning filter behind
    assert warnings.filters == filters
    if STATUS.is_file():
        quarter = len(rss) // 4
        first, last = float(np.mean(rss[:quarter])), float(np.mean(rss[-quarter:]))
        assert last < 1.10 * first, f"RSS grew from {first:.0f} MB to {last:.0f} MB over {len(rss)} calls"
    if backend == "torch":  # the passes ran on the backend's workers (CPUs // threads, at least 2), not the callers
        assert 1 <= len(ran_on) <= max(2, default_threads())
    if backend == "openvino":  # and on at most the pool's infer requests
        assert engine.backend._requests._created <= engine.backend._requests.size
    engine.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_paths_under_threads(backend, tiny, restore_torch_threads):
    """The NumPy path, the tensor path and classify, called from threads at once, each equal to its serial result."""
    engine = _load(tiny[backend], backend, threads=1)
    b = engine.backend
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 3, 128, 128, generator=gen) for _ in range(4)]
    targets = torch.tensor([-1, 3])
    serial = [
        (b.infer(x.numpy(), targets.numpy()), b.infer_tensors(x, targets), b.classify(x.numpy())) for x in batches
    ]
    bad, errors = [], []

    def worker(k: int) -> None:
        for i in range(30):
            j, kind = (k + i) % len(batches), (k + i) % 3
            (logits, sal), (logits_t, sal_t), classified = serial[j]
            try:
                if kind == 0:
                    lo, so = b.infer(batches[j].numpy(), targets.numpy())
                    same = np.array_equal(lo, logits) and np.array_equal(so, sal)
                elif kind == 1:
                    lo, so = b.infer_tensors(batches[j], targets)
                    same = torch.equal(lo, logits_t) and torch.equal(so, sal_t)
                else:
                    same = np.array_equal(b.classify(batches[j].numpy()), classified)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            if not same:
                bad.append((j, kind))

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(worker, range(THREADS)))
    assert not errors, f"{len(errors)} calls failed, e.g. {errors[0]}"
    assert not bad, f"{len(bad)} calls differ from the serial result: {bad[:10]}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_default_model_under_threads(backend, example_images, restore_torch_threads):
    """The real EfficientNet-Lite0 on the example photos: fewer calls, same guarantees."""
    artifact = None if backend == "torch" else BUILTIN_DIR / DEFAULT_EXPORTED_BUILTIN
    engine = _load(artifact, backend, threads=1)
    serial = [engine.explain(p) for p in example_images]
    errors, wrong, _ = _hammer(engine, example_images, serial, THREADS, 2)
    _check(errors, wrong, THREADS * 2)


def test_torch_runner_one_worker():
    """With one worker (``threads`` covering the CPUs) every pass runs on one thread; errors reach the caller; a pass
    that calls the runner again runs in place; a closed runner starts again."""
    from engine.backends.torch_ import _Runner

    runner = _Runner(1)
    with ThreadPoolExecutor(THREADS) as pool:
        idents = set(pool.map(lambda _: runner(threading.get_ident), range(4 * THREADS)))
    assert len(idents) == 1 and threading.get_ident() not in idents
    assert runner(lambda: runner(threading.get_ident)) in idents
    with pytest.raises(ZeroDivisionError):
        runner(lambda: 1 / 0)
    runner.close()
    assert runner(lambda: 7) == 7
    runner.close()
