"""pytorch-grad-cam as a peer: Grad-CAM and Score-CAM saliency maps, baselines for the quality benchmark.

Runs in the main environment (``pip install 'xai-engine[benchmark]'``), on the same torch model and images the engine
explains; nothing here re-implements a method. openvino-xai's RISE, the other baseline, is in ``peers_openvino_xai.py``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from engine.backbones import BackboneAdapter
from engine.errors import BackendUnavailableError, UnsupportedModelError

CAM_METHODS = {"gradcam": "GradCAM", "scorecam": "ScoreCAM"}


def cam_target_layer(adapter: BackboneAdapter) -> nn.Module:
    """The last convolutional feature map of a CNN, the layer Grad-CAM and Score-CAM read (as their papers do)."""
    m = adapter.model
    if adapter.library == "timm" and hasattr(m, "bn2") and hasattr(m, "conv_head"):
        return m.bn2  # EfficientNet family: conv_head -> bn2 (+act) is the last feature map
    if hasattr(m, "layer4"):
        return m.layer4
    if hasattr(m, "features"):
        return m.features[-1] if isinstance(m.features, nn.Sequential) else m.features
    raise UnsupportedModelError(f"no Grad-CAM target layer known for {adapter.library}/{adapter.name}.")


def cam_maps(
    adapter: BackboneAdapter, images: np.ndarray, targets: np.ndarray, method: str = "gradcam", batch_size: int = 16
) -> np.ndarray:
    """Saliency maps (N, H, W) in [0, 1] from pytorch-grad-cam's Grad-CAM or Score-CAM.

    Args:
        adapter: the backbone (torch, eval mode) the engine explains.
        images: normalised float32 batch (N, 3, H, W).
        targets: class per image.
        method: ``gradcam`` or ``scorecam``.
        batch_size: images per Grad-CAM call; Score-CAM's own forward batch.
    """
    from engine._compat import ensure_torchvision

    ensure_torchvision()
    try:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as e:
        raise BackendUnavailableError(
            "Grad-CAM baselines need pytorch-grad-cam: pip install 'xai-engine[benchmark]'"
        ) from e
    if method not in CAM_METHODS:
        raise UnsupportedModelError(f"unknown CAM baseline {method!r}; choose from {sorted(CAM_METHODS)}.")
    model = adapter.model.eval()
    cam = getattr(pytorch_grad_cam, CAM_METHODS[method])(model=model, target_layers=[cam_target_layer(adapter)])
    cam.batch_size = batch_size
    out = []
    step = 1 if method == "scorecam" else batch_size
    try:
        for start in range(0, len(images), step):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + step]))
            t = [ClassifierOutputTarget(int(c)) for c in targets[start : start + step]]
            out.append(np.asarray(cam(input_tensor=x, targets=t), dtype=np.float32))
    finally:  # remove its hooks: the model is used again afterwards (metrics, export), and they would keep firing
        cam.activations_and_grads.release()
    return np.concatenate(out, axis=0)
