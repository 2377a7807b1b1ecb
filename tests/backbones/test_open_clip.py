"""open_clip backbones keep CLIP's text tower on request, to build a zero-shot head from class names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import Engine
from engine.backbones import build_backbone
from engine.config import BackboneConfig
from engine.create import create_artifact
from engine.errors import InputError

NAMES = ["golden retriever", "tabby cat", "orange"]


@pytest.fixture(scope="module")
def adapter():
    return build_backbone(BackboneConfig("open_clip", "ViT-S-32", 3, "random", {"text_tower": True}))


def test_zero_shot_logits_are_clip_similarities(adapter):
    import open_clip

    adapter.zero_shot_head(NAMES, templates=("a photo of a {}.", "a picture of a {}."))
    assert not any("token_embedding" in k or "text" in k for k in adapter.state_dict()), "text tower kept aside"
    clip = adapter.__dict__["_text_tower"]
    tok = open_clip.get_tokenizer("ViT-S-32")
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        image = adapter.model.visual(x)
        image = image / image.norm(dim=-1, keepdim=True)
        text = []
        for name in NAMES:
            e = clip.encode_text(tok([f"a photo of a {name}.", f"a picture of a {name}."]))
            e = (e / e.norm(dim=-1, keepdim=True)).mean(0)
            text.append(e / e.norm())
        want = clip.logit_scale.exp() * image @ torch.stack(text).T
        got = adapter(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_zero_shot_needs_the_text_tower_and_one_name_per_class(adapter):
    plain = build_backbone(BackboneConfig("open_clip", "ViT-S-32", 3, "random"))
    with pytest.raises(InputError, match="text_tower=True"):
        plain.zero_shot_head(NAMES)
    with pytest.raises(InputError, match="2 class names for a 3-class"):
        adapter.zero_shot_head(NAMES[:2])
    with pytest.raises(InputError, match="needs a"):
        adapter.zero_shot_head(NAMES, templates=("no slot",))


def test_zero_shot_artifact_stores_the_head_not_the_text_tower(tmp_path, example_images):
    art = create_artifact(
        "vit-reciprocam", "open_clip/ViT-S-32", tmp_path / "zs", source="random", num_classes=3,
        class_names=NAMES, zero_shot=True,
    )  # fmt: skip
    assert art.manifest["backbone"]["kwargs"] == {"normalize": True}  # rebuilt without the text tower
    exp = Engine.load(art.path, backend="torch").explain(example_images[0])
    assert exp.class_name in NAMES and np.isfinite(exp.saliency).all()
    with pytest.raises(InputError, match="open_clip"):
        create_artifact("reciprocam", "timm/resnet18", tmp_path / "x", source="random", zero_shot=True)
