"""engine.ops: compiled kernels (cpp_ext/) against their torch references, bit for bit; dispatch and fallback.

The first test that needs the CPU kernels builds them (JIT, about 1 minute cold on 2 cores, instant from the cache).
"""

from __future__ import annotations

import shutil
import subprocess
import time
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from engine import ops
from engine.ops import _ext, reference

CHECK_SCRIPT = Path(__file__).resolve().parents[2] / "cpp_ext" / "build_cuda_check.sh"


def assert_bitwise_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Same shape, dtype and bits (NaN payloads and -0.0 included)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    if actual.dtype == torch.float32:
        actual, expected = actual.view(torch.int32), expected.view(torch.int32)
    assert torch.equal(actual, expected)


@pytest.fixture(scope="session")
def ext() -> ModuleType:
    """The compiled CPU kernels (built once per session; skips where they cannot build here)."""
    start = time.perf_counter()
    module = _ext.load()
    if module is None:
        pytest.skip(f"compiled kernels unavailable: {_ext.load_error()}")
    print(f"\nxai_engine_ops ready in {time.perf_counter() - start:.1f} s (cold build or cache)")
    return module


@pytest.fixture
def force_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dispatch to the torch reference for this test (as if the build had been skipped)."""
    monkeypatch.setattr(_ext, "_loaded", True)
    monkeypatch.setattr(_ext, "_module", None)


@pytest.fixture(params=["cpp", "torch"])
def backend(request: pytest.FixtureRequest) -> str:
    """Run a test through the public functions on each backend."""
    if request.param == "cpp":
        request.getfixturevalue("ext")
        assert ops.backend_name() == "cpp"
    else:
        request.getfixturevalue("force_torch")
        assert ops.backend_name() == "torch"
    return request.param


def with_specials(x: torch.Tensor) -> torch.Tensor:
    """Put NaN, +-inf, -0.0 and a denormal into a tensor (bit-exactness must hold for them too)."""
    flat = x.flatten()
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-40])
    flat[: min(5, flat.numel())] = specials[: min(5, flat.numel())]
    return flat.view_as(x)


# ---------------------------------------------------------------------------------------------------- masking


@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (3, 17, 33, 7), (1, 1, 1, 1), (2, 50, 65, 51), (0, 3, 4, 2)])
def test_mask_tokens_matches_reference(ext: ModuleType, shape: tuple[int, int, int, int]) -> None:
    b, t, d, n = shape
    tokens = torch.randn(b, t, d)
    masks = torch.rand(n, t) * 2 - 0.5
    masks[:, ::3] = 0.0
    if tokens.numel():
        tokens = with_specials(tokens)
    expected = reference.mask_tokens(tokens, masks)
    assert_bitwise_equal(ext.mask_tokens(tokens, masks), expected)
    assert_bitwise_equal(ops.mask_tokens(tokens, masks), expected)


@pytest.mark.parametrize("shape", [(2, 3, 7, 7, 50), (1, 5, 3, 5, 16), (3, 1, 1, 2, 1)])
def test_mask_feature_map_matches_reference(ext: ModuleType, shape: tuple[int, ...]) -> None:
    b, c, h, w, n = shape
    features = with_specials(torch.randn(b, c, h, w))
    masks = (torch.rand(n, h * w) > 0.5).float()
    expected = reference.mask_feature_map(features, masks)
    assert_bitwise_equal(ext.mask_feature_map(features, masks), expected)
    assert_bitwise_equal(ops.mask_feature_map(features, masks), expected)


def test_mask_tokens_by_hand(backend: str) -> None:
    tokens = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # B=1, T=2, D=2
    masks = torch.tensor([[1.0, 0.0], [0.5, 2.0]])  # N=2
    expected = torch.tensor([[[1.0, 2.0], [0.0, 0.0]], [[0.5, 1.0], [6.0, 8.0]]])
    assert_bitwise_equal(ops.mask_tokens(tokens, masks), expected)


# ---------------------------------------------------------------------------------------------------- ranks


def three_value_map(h: int, w: int) -> torch.Tensor:
    return torch.randint(0, 3, (h, w)).float() * 0.25


def expected_rank_by_value_groups(saliency: torch.Tensor) -> torch.Tensor:
    """Rank without torch.sort: distinct values descending, each group's pixels by flat index ascending."""
    flat = saliency.flatten().numpy()
    order = np.concatenate([np.flatnonzero(flat == v) for v in np.unique(flat)[::-1]])
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return torch.from_numpy(rank).long()


@pytest.mark.parametrize("kind", ["random", "constant", "three_values", "specials"])
@pytest.mark.parametrize("hw", [(1, 1), (7, 13), (32, 32)])
def test_saliency_rank_matches_reference(ext: ModuleType, kind: str, hw: tuple[int, int]) -> None:
    h, w = hw
    saliency = {
        "random": torch.rand(h, w),
        "constant": torch.full((h, w), 0.5),
        "three_values": three_value_map(h, w),
        "specials": with_specials(three_value_map(h, w) - 0.25),  # NaN, inf, -0.0 next to +0.0
    }[kind]
    expected = reference.saliency_rank(saliency)
    assert_bitwise_equal(ext.saliency_rank(saliency[None])[0], expected)
    assert_bitwise_equal(ops.saliency_rank(saliency), expected)
    batch = torch.stack([saliency, saliency.flip(0), torch.zeros(h, w)])
    assert_bitwise_equal(ops.saliency_rank(batch), reference.saliency_rank(batch))


def test_saliency_rank_ties_by_index(backend: str) -> None:
    assert_bitwise_equal(ops.saliency_rank(torch.zeros(5, 7)), torch.arange(35))
    saliency = three_value_map(9, 11)
    assert_bitwise_equal(ops.saliency_rank(saliency), expected_rank_by_value_groups(saliency))
    signed_zero = torch.tensor([[0.0, -0.0], [float("nan"), -0.0]])
    assert_bitwise_equal(ops.saliency_rank(signed_zero), torch.tensor([1, 2, 0, 3]))


# ---------------------------------------------------------------------------------------------------- perturbation

COUNTS = [0, 5, 5, -3, 91, 1000, 17, 17, 0, 90, 1]  # repeats, out of range, unsorted (H*W = 91 below)


@pytest.mark.parametrize("mode", ["insertion", "deletion"])
@pytest.mark.parametrize("kind", ["random", "constant", "three_values"])
def test_perturb_matches_reference(ext: ModuleType, mode: str, kind: str) -> None:
    c, h, w = 3, 7, 13
    image, baseline = with_specials(torch.randn(c, h, w)), torch.randn(c, h, w)
    saliency = {"random": torch.rand(h, w), "constant": torch.ones(h, w), "three_values": three_value_map(h, w)}[kind]
    counts = torch.tensor(COUNTS)
    expected = reference.perturb_from_rank(
        image[None], reference.saliency_rank(saliency)[None], baseline[None], counts, mode == "insertion"
    )[0]
    assert_bitwise_equal(ops.perturb_by_rank(image, saliency, baseline, counts, mode), expected)
    rank = ops.saliency_rank(saliency)
    assert_bitwise_equal(ops.perturb_from_rank(image, rank, baseline, COUNTS, mode), expected)
    raw = ext.perturb_from_rank(image[None], rank[None], baseline[None], counts, mode == "insertion")
    assert_bitwise_equal(raw[0], expected)


@pytest.mark.parametrize("mode", ["insertion", "deletion"])
def test_perturb_batch_matches_reference(ext: ModuleType, mode: str) -> None:
    images, baselines = torch.randn(3, 2, 5, 9), torch.zeros(3, 2, 5, 9)
    saliency = torch.stack([torch.rand(5, 9), torch.full((5, 9), 2.0), three_value_map(5, 9)])
    counts = torch.tensor([45, 0, 3, 3, 60, 44, -1])
    expected = reference.perturb_from_rank(
        images, reference.saliency_rank(saliency), baselines, counts, mode == "insertion"
    )
    out = ops.perturb_by_rank_batch(images, saliency, baselines, counts, mode)
    assert out.shape == (3, 7, 2, 5, 9)
    assert_bitwise_equal(out, expected)
    for b in range(3):  # each image ranked by its own map
        assert_bitwise_equal(out[b], ops.perturb_by_rank(images[b], saliency[b], baselines[b], counts, mode))


def test_perturb_2x2_by_hand(backend: str) -> None:
    # saliency ranks: pixel 1 (0.9) -> 0, pixels 2 and 3 (0.5, a tie: lower index first) -> 1, 2, pixel 0 -> 3
    saliency = torch.tensor([[0.1, 0.9], [0.5, 0.5]])
    image = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    baseline = torch.tensor([[10.0, 20.0], [30.0, 40.0]])
    assert_bitwise_equal(ops.saliency_rank(saliency), torch.tensor([3, 0, 1, 2]))
    insertion = torch.tensor(
        [
            [[10.0, 20.0], [30.0, 40.0]],  # k=0: all baseline
            [[10.0, 2.0], [30.0, 40.0]],  # k=1: pixel 1 from the image
            [[10.0, 2.0], [3.0, 40.0]],  # k=2: + pixel 2
            [[10.0, 2.0], [3.0, 4.0]],  # k=3: + pixel 3
            [[1.0, 2.0], [3.0, 4.0]],  # k=4: all image
        ]
    )
    deletion = torch.tensor(
        [
            [[1.0, 2.0], [3.0, 4.0]],
            [[1.0, 20.0], [3.0, 4.0]],
            [[1.0, 20.0], [30.0, 4.0]],
            [[1.0, 20.0], [30.0, 40.0]],
            [[10.0, 20.0], [30.0, 40.0]],
        ]
    )
    # two channels: the second is the first times -1, so every channel of a pixel must move together
    two = torch.stack([image, -image]), torch.stack([baseline, -baseline])
    for mode, expected in (("insertion", insertion), ("deletion", deletion)):
        out = ops.perturb_by_rank(two[0], saliency, two[1], [0, 1, 2, 3, 4], mode)
        assert_bitwise_equal(out, torch.stack([expected, -expected], dim=1))
        clamped = ops.perturb_by_rank(two[0], saliency, two[1], [-5, 9], mode)  # clamped to [0, H*W]
        assert_bitwise_equal(clamped, out[[0, 4]])


# ---------------------------------------------------------------------------------------------------- AUC


@pytest.mark.parametrize("rule", ["trapezoid", "rise"])
@pytest.mark.parametrize("shape", [(7, 13), (1, 2), (64, 225)])
def test_auc_matches_reference(ext: ModuleType, rule: str, shape: tuple[int, int]) -> None:
    scores = torch.rand(*shape)
    expected = reference.auc(scores, None, rule)
    torch.testing.assert_close(ops.auc(scores, rule=rule), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(ext.auc(scores, None, ("trapezoid", "rise").index(rule)), expected, rtol=0, atol=1e-6)
    if rule == "trapezoid":
        x = torch.sort(torch.rand(shape[1]) * 50).values.double()
        torch.testing.assert_close(ops.auc(scores, x), reference.auc(scores, x, rule), rtol=0, atol=1e-6)


def test_auc_by_hand(backend: str) -> None:
    ramp = torch.linspace(0, 1, 5)[None]  # 0, 1/4, ..., 1: exact in binary
    assert ops.auc(ramp).item() == 0.5
    assert ops.auc(ramp, rule="rise").item() == 0.5
    assert ops.auc(torch.linspace(0, 1, 225)[None]).item() == pytest.approx(0.5, abs=1e-6)
    ones = torch.ones(2, 11)
    assert ops.auc(ones).tolist() == [1.0, 1.0]
    assert ops.auc(ones, rule="rise").tolist() == [1.0, 1.0]
    # RISE on 3 points: (0.2 + 0.6 + 1.0 - 0.2/2 - 1.0/2) / 2 = 0.6
    assert ops.auc(torch.tensor([[0.2, 0.6, 1.0]]), rule="rise").item() == pytest.approx(0.6, abs=1e-7)
    # uneven x = 0, 0.25, 1 (in pixels: 0, 1, 4): 0.25 * (1 + 0.5) / 2 + 0.75 * (0.5 + 0) / 2 = 0.375
    curve = torch.tensor([[1.0, 0.5, 0.0]])
    assert ops.auc(curve, [0.0, 0.25, 1.0]).item() == 0.375
    assert ops.auc(curve, [0, 1, 4]).item() == 0.375


def test_argument_errors_name_a_fix() -> None:
    with pytest.raises(ValueError, match="insertion' or 'deletion"):
        ops.perturb_by_rank(torch.zeros(1, 2, 2), torch.zeros(2, 2), torch.zeros(1, 2, 2), [1], "inserted")
    with pytest.raises(ValueError, match="resize the saliency"):
        ops.perturb_by_rank(torch.zeros(1, 2, 2), torch.zeros(3, 2), torch.zeros(1, 2, 2), [1])
    with pytest.raises(ValueError, match="integers"):
        ops.perturb_by_rank(torch.zeros(1, 2, 2), torch.zeros(2, 2), torch.zeros(1, 2, 2), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="takes no x"):
        ops.auc(torch.zeros(1, 3), [0, 1, 2], rule="rise")
    with pytest.raises(ValueError, match="scores\\[None\\]"):
        ops.auc(torch.zeros(3))
    with pytest.raises(ValueError, match="Reshape the masks"):
        ops.mask_tokens(torch.zeros(1, 3, 2), torch.zeros(2, 4))


# ---------------------------------------------------------------------------------------------------- dispatch


class _RefusingKernels:
    """Stands in for the compiled module and records calls (a call while tracing fails the test)."""

    def __init__(self) -> None:
        self.calls = 0

    def mask_tokens(self, tokens: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if ops._tracing():
            raise AssertionError("compiled kernel called while tracing")
        return reference.mask_tokens(tokens, masks)


class _Masker(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("masks", (torch.rand(4, 6) > 0.5).float())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return ops.mask_tokens(tokens, self.masks).sum(-1)


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
def test_dispatch_uses_torch_while_tracing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = _RefusingKernels()
    monkeypatch.setattr(_ext, "_loaded", True)
    monkeypatch.setattr(_ext, "_module", fake)
    model, tokens = _Masker(), torch.randn(2, 6, 3)
    model(tokens)
    assert fake.calls == 1  # eager CPU float32: the compiled kernel
    traced = torch.jit.trace(model, tokens, check_trace=False)  # the check would re-run eagerly
    assert fake.calls == 1
    torch.testing.assert_close(traced(tokens), model(tokens), rtol=0, atol=0)
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    model(tokens)
    assert fake.calls == 2  # the eager call above; none while "exporting"
    monkeypatch.undo()
    pytest.importorskip("onnx")
    monkeypatch.setattr(_ext, "_loaded", True)
    monkeypatch.setattr(_ext, "_module", fake)
    with torch.no_grad():
        torch.onnx.export(model, (tokens,), str(tmp_path / "m.onnx"), dynamo=False)
    assert fake.calls == 2
    program = torch.export.export(model, (tokens,))  # dynamo tracing with fake tensors (ONNX's dynamo=True path)
    assert fake.calls == 2
    torch.testing.assert_close(program.module()(tokens), model(tokens), rtol=0, atol=0)


def test_dispatch_conditions(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = object()
    monkeypatch.setattr(_ext, "_loaded", True)
    monkeypatch.setattr(_ext, "_module", fake)
    x = torch.randn(4, 5)
    assert ops._kernels(x) is fake
    assert ops._kernels(x.double()) is None
    assert ops._kernels(x.t()) is None  # not contiguous
    assert ops._kernels(torch.nn.Parameter(x)) is None  # needs a gradient
    with torch.no_grad():
        assert ops._kernels(x.clone().requires_grad_()) is fake
    assert ops._kernels(x.to("meta")) is None


def test_fallback_when_build_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(_ext.ENV_NO_EXT, raising=False)
    monkeypatch.setattr(_ext, "_loaded", False)
    monkeypatch.setattr(_ext, "_module", None)
    monkeypatch.setattr(_ext, "_error", None)
    monkeypatch.setattr(_ext, "CPU_SOURCES", (tmp_path / "missing_ops.cpp",))  # the real build() fails
    tokens, masks = torch.randn(2, 5, 3), torch.rand(3, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ops.mask_tokens(tokens, masks)
        assert ops.backend_name() == "torch"
        ops.perturb_by_rank(torch.randn(1, 3, 3), torch.rand(3, 3), torch.zeros(1, 3, 3), [0, 4])
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert "\n" not in messages[0] and "missing_ops.cpp" in messages[0] and "XAI_ENGINE_NO_EXT=1" in messages[0]
    assert "Fix:" in messages[0]
    assert_bitwise_equal(out, reference.mask_tokens(tokens, masks))
    assert "missing_ops.cpp" in (_ext.load_error() or "")


def test_fallback_when_loader_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_ext.ENV_NO_EXT, raising=False)
    monkeypatch.setattr(_ext, "_loaded", False)
    monkeypatch.setattr(_ext, "_module", None)

    def broken_build(verbose: bool = False) -> ModuleType:
        raise RuntimeError("Error building extension 'xai_engine_ops':\nc++: not found\nninja: build stopped")

    monkeypatch.setattr(_ext, "build", broken_build)
    with pytest.warns(RuntimeWarning, match="c\\+\\+: not found") as record:
        assert ops.backend_name() == "torch"
        assert ops.backend_name() == "torch"  # loaded once: no second warning
    assert len(record) == 1 and "\n" not in str(record[0].message)
    scores = torch.rand(3, 9)
    torch.testing.assert_close(ops.auc(scores), reference.auc(scores, None, "trapezoid"))


def test_env_var_forces_torch_silently(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_ext.ENV_NO_EXT, "1")
    monkeypatch.setattr(_ext, "_loaded", False)
    monkeypatch.setattr(_ext, "_module", None)
    monkeypatch.setattr(_ext, "build", lambda verbose=False: pytest.fail("build() ran despite XAI_ENGINE_NO_EXT=1"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ops.backend_name() == "torch"
    assert "XAI_ENGINE_NO_EXT" in (_ext.load_error() or "")


def test_build_dir_is_versioned(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    root = _ext.build_root()
    assert root.parent == tmp_path and torch.__version__.replace("+", "_") in root.name
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    assert _ext.build_root().parent == Path.home() / ".cache" / "xai-engine" / "torch_extensions"


# ---------------------------------------------------------------------------------------------------- CUDA


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_cuda_sources_compile_with_nvcc() -> None:
    result = subprocess.run(["bash", str(CHECK_SCRIPT)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and torch with CUDA")
def test_cuda_kernels_match_reference() -> None:
    cuda = _ext.load_cuda()
    dev = torch.device("cuda")
    tokens, masks = with_specials(torch.randn(3, 17, 33)).to(dev), torch.rand(5, 17, device=dev)
    assert_bitwise_equal(cuda.mask_tokens(tokens, masks), reference.mask_tokens(tokens, masks))
    features, fmasks = torch.randn(2, 3, 7, 7, device=dev), (torch.rand(50, 49, device=dev) > 0.5).float()
    assert_bitwise_equal(cuda.mask_feature_map(features, fmasks), reference.mask_feature_map(features, fmasks))
    saliency = torch.stack(
        [torch.rand(13, 17), torch.ones(13, 17), three_value_map(13, 17), with_specials(three_value_map(13, 17))]
    )
    rank = cuda.saliency_rank(saliency.to(dev))
    assert_bitwise_equal(rank.cpu(), reference.saliency_rank(saliency))
    images, baselines = torch.randn(4, 3, 13, 17, device=dev), torch.randn(4, 3, 13, 17, device=dev)
    counts = torch.tensor([0, 5, 5, -3, 300, 221, 17, 17, 220], device=dev)
    for insertion in (True, False):
        expected = reference.perturb_from_rank(images, rank, baselines, counts, insertion)
        assert_bitwise_equal(cuda.perturb_from_rank(images, rank, baselines, counts, insertion), expected)
    scores = torch.rand(64, 225, device=dev)
    for rule in (0, 1):
        expected = reference.auc(scores, None, ("trapezoid", "rise")[rule])
        torch.testing.assert_close(cuda.auc(scores, None, rule), expected, rtol=0, atol=1e-6)
    # public functions dispatch to the CUDA kernels once they are loaded
    assert_bitwise_equal(
        ops.perturb_by_rank(images[0], saliency[2].to(dev), baselines[0], counts, "deletion"),
        reference.perturb_from_rank(images[:1], rank[2:3], baselines[:1], counts, False)[0],
    )
