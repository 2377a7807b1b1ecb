"""Insertion/deletion where the model runs: the tensor path (perturbed images made on the model's device and handed
over as tensors) gives the curves of the NumPy path; on a CUDA model the perturbations run on the GPU."""

import numpy as np
import pytest
import torch

from engine.metrics import insertion_deletion
from engine.metrics.base import model_device

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(4, 5),
    ).eval()  # fmt: skip
    images = torch.rand(3, 3, 20, 24, generator=g).numpy()
    saliency = torch.rand(3, 5, 6, generator=g).numpy()
    return model, images, saliency


@pytest.mark.parametrize(("preset", "levels"), [("rise", None), ("keio", 8), ("ovxai", None)])
def test_tensor_path_equals_numpy_path(preset, levels):
    model, images, saliency = _case()
    targets = np.array([0, 3, 4])

    @torch.no_grad()
    def numpy_model(x: np.ndarray) -> np.ndarray:
        assert isinstance(x, np.ndarray)
        return model(torch.from_numpy(x)).numpy()

    @torch.no_grad()
    def tensor_model(x: torch.Tensor) -> torch.Tensor:
        assert isinstance(x, torch.Tensor) and x.device.type == "cpu"
        return model(x)

    kw = {"mean": MEAN, "std": STD, "preset": preset, "targets": targets, "batch_size": 7, "quantize_levels": levels}
    ref = insertion_deletion(numpy_model, images, saliency, **kw)
    got = insertion_deletion(tensor_model, images, saliency, device="cpu", **kw)
    for key in ("insertion", "deletion", "id"):
        np.testing.assert_array_equal(got[key].per_image, ref[key].per_image)
    assert got["id"].params["model_calls"] == ref["id"].params["model_calls"]


def test_model_device_is_none_for_host_models():
    model, _, _ = _case()
    assert model_device(model) is None and model_device(lambda x: x) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_cuda_model_gets_cuda_batches_and_the_same_curves():
    model, images, saliency = _case()
    seen = []

    @torch.no_grad()
    def host(x: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(x)).numpy()

    kw = {"mean": MEAN, "std": STD, "preset": "keio", "targets": np.array([0, 3, 4]), "quantize_levels": 8}
    ref = insertion_deletion(host, images, saliency, **kw)  # on the host, before the model moves
    cuda_model = model.cuda()  # in place
    assert model_device(cuda_model).type == "cuda"

    def on_gpu(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.device.type)
        with torch.no_grad():
            return cuda_model(x)

    on_gpu.parameters = cuda_model.parameters  # a torch module's devices are read off its parameters
    got = insertion_deletion(on_gpu, images, saliency, **kw)
    assert seen and set(seen) == {"cuda"}
    np.testing.assert_allclose(got["id"].per_image, ref["id"].per_image, atol=1e-5)
