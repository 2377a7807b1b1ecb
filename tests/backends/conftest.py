import pytest
import torch

from engine.config import ExplainerConfig
from engine.graph import build_graph
from engine.testing import random_backbone


@pytest.fixture(scope="package")
def vit_graph():
    """A well-conditioned random ViT-Ti explain graph (ViT-ReciproCAM, fast form), in memory."""
    torch.manual_seed(0)
    return build_graph(random_backbone("timm", "vit_tiny_patch16_224"), ExplainerConfig("vit-reciprocam", {}))


@pytest.fixture(scope="package")
def batch():
    return torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(4))
