"""LRP cross-checked against a peer: zennit (an autograd-hook LRP), on networks without skips and, for the plain
``split="none"`` baseline, on a ResNet. Our relevance pass has no autograd; the maps must agree to <= 1e-5 (relative
to the map's largest magnitude; measured ~1e-15 in float64).

Conventions, and how the test aligns them:

* Start: zennit starts from whatever output relevance it is handed; we hand it ``logit_t * e_t``, ours.
* Biases: zennit's ``ZPlus`` and ``AlphaBeta`` put the positive part of the bias into ``z+`` (the negative part into
  ``z-``) unless ``zero_params="bias"``; ours ignore the bias (the authors zero the Linear bias), so the test passes
  ``zero_params=["bias"]``. Both ``Epsilon`` rules keep the whole bias in ``z``.
* Stabiliser: both ``z + eps * sign(z)`` with ``sign(0) = +1``, the same eps.
* Signed inputs: zennit's ``ZPlus`` is ``alpha=1, beta=0`` with negative inputs allowed (``a+ w+ + a- w-``), ours too.
* The first layer: zennit's rules see the pixels: ``input="image"`` (our default, ``ones``, is the authors' code).
* Max pool: zennit gives it no rule, so the gradient routes each window's relevance to its argmax: our ``winner``
  (ties aside: torch's gradient picks one index, we share; in these tests every tie carries zero relevance).
* Average pools (plain and adaptive): zennit's ``Norm`` rule, the same proportional rule as ours.
* Activations: zennit's ``Pass`` (ReLU, ReLU6, SiLU), ours.
* BatchNorm: zennit's ``SequentialMergeBatchNorm`` folds it into the conv like ours, but then leaves the BatchNorm
  computing ``x / sqrt(1 + eps)`` (running var 1, its eps kept), which shifts zennit's logits by ~1e-4 on a ResNet-18;
  the test models set every BatchNorm's eps to 0, so both compute the same network.
* Residual sums (``split="none"`` only): zennit's ``ResNetCanonizer`` routes the addition through a ``Sum`` module
  with the ``Norm`` rule, i.e. LRP-0 on the sum, which is what ``none`` does. The Relevance Splitting modes have no
  peer.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from engine.compat import ensure_torchvision

ensure_torchvision()  # zennit imports torchvision

sys.path.insert(0, str(Path(__file__).parent))
from lrp_models import backbone, graph, inputs, randomise, small_cnn, tiny_vgg  # noqa: E402

zennit = pytest.importorskip("zennit")
from zennit.attribution import Gradient  # noqa: E402
from zennit.canonizers import SequentialMergeBatchNorm  # noqa: E402
from zennit.composites import LayerMapComposite  # noqa: E402
from zennit.layer import Sum  # noqa: E402
from zennit.rules import AlphaBeta, Epsilon, Norm, Pass, ZPlus  # noqa: E402
from zennit.torchvision import ResNetCanonizer  # noqa: E402

TOL = 1e-5
EPS = 1e-5


def _peer_rule(rule: str, options: dict):
    eps = options.get("epsilon", EPS)
    if rule == "z_plus":
        return ZPlus(stabilizer=eps, zero_params=["bias"])
    if rule == "epsilon":
        return Epsilon(epsilon=eps)
    return AlphaBeta(alpha=options["alpha"], beta=options["beta"], stabilizer=eps, zero_params=["bias"])


def _zennit(model: nn.Module, x, target, rule: str, options: dict, canonizers: list):
    layer_map = [
        ((nn.Conv2d, nn.Linear), _peer_rule(rule, options)),
        ((nn.AvgPool2d, nn.AdaptiveAvgPool2d, Sum), Norm(stabilizer=options.get("epsilon", EPS))),
        ((nn.ReLU, nn.ReLU6, nn.SiLU), Pass()),
    ]
    composite = LayerMapComposite(layer_map=layer_map, canonizers=canonizers)
    model = copy.deepcopy(model)  # the canonizers and hooks modify the model while they are attached
    with Gradient(model=model, composite=composite) as attributor:
        out, rel = attributor(
            x.clone(), lambda o: torch.zeros_like(o).scatter(1, target[:, None], o.gather(1, target[:, None]))
        )
    return out, rel


def _compare(adapter, size, rule, options, canonizers, split="downsample_only"):
    x = inputs(2, size, seed=2)
    g = graph(adapter, size, rule=rule, max_pool="winner", split=split, input="image", **{"epsilon": EPS, **options})
    with torch.no_grad():
        logits, ours, _ = g.explainer.relevance(x, torch.tensor([3, -1]))
    target = torch.stack([torch.tensor(3), logits[1].argmax()])
    out, peer = _zennit(adapter.model, x, target, rule, options, canonizers)
    assert (out - logits).abs().max().item() <= 1e-12 * max(1.0, logits.abs().max().item())  # the same network
    gap = ((ours - peer).abs().max() / peer.abs().max()).item()
    assert gap <= TOL, gap
    assert peer.abs().max().item() > 0 and not torch.equal(ours[0], ours[1])
    return gap


RULES = [
    ("z_plus", {}),
    ("epsilon", {"epsilon": 0.1}),
    ("alpha_beta", {"alpha": 2.0, "beta": 1.0}),
    ("alpha_beta", {"alpha": 1.0, "beta": 0.0}),
]
RULE_IDS = ["z_plus", "epsilon", "alpha2_beta1", "alpha1_beta0"]


@pytest.mark.parametrize(("rule", "options"), RULES, ids=RULE_IDS)
def test_matches_zennit_on_a_small_cnn(rule, options):
    """Every non-skip layer kind: TF-SAME strided conv, BatchNorm (folded), ReLU6, depthwise conv, SiLU, 1x1 conv,
    overlapping max pool, average pool, an adaptive average pool with overlapping windows, two Linears."""
    _compare(small_cnn(bn_eps=0.0), 30, rule, options, [SequentialMergeBatchNorm()])


@pytest.mark.parametrize(("rule", "options"), RULES[:3], ids=RULE_IDS[:3])
def test_matches_zennit_on_a_tiny_vgg(rule, options):
    _compare(tiny_vgg(), 32, rule, options, [])


def test_matches_zennit_on_vgg16_random_weights():
    """torchvision's VGG-16 conv stack (13 convs with biases, 5 max pools) with random weights and a small classifier
    (the 25088 x 4096 one would cost 800 MB in float64); at 32 x 32 the adaptive pool replicates 1 x 1 to 7 x 7."""
    vgg = backbone("torchvision", "vgg16", dtype=torch.float32)  # (its own classifier is dropped before float64)
    vgg.model.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 64), nn.ReLU(), nn.Dropout(), nn.Linear(64, 10))
    _compare(vgg.double().eval(), 32, "z_plus", {}, [])


@pytest.mark.parametrize(("rule", "options"), RULES[:2], ids=RULE_IDS[:2])
def test_plain_split_matches_zennit_resnet_canonizer(rule, options):
    """``split="none"`` on a ResNet-18: LRP-0 at the residual sums, as zennit's ResNet canonizer does."""
    ad = randomise(backbone("torchvision", "resnet18"), bn_eps=0.0)
    _compare(ad, 32, rule, options, [ResNetCanonizer()], split="none")
