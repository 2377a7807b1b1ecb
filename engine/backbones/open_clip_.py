"""Adapter over open_clip ViT image encoders, with a linear classifier on the image embedding.

The classifier is ``Linear(embed_dim, num_classes)``. For zero-shot use, load the class text embeddings (times the
logit scale) as its weight and set ``normalize=True`` so the image embedding is L2-normalised first; for a linear probe,
train it with ``normalize=False``.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..errors import UnsupportedModelError
from .base import BackboneAdapter, ViTParts, mha_self_attention, mha_weights


class OpenClipClassifier(nn.Module):
    """open_clip image encoder + linear classifier (the whole thing is the classifier being explained)."""

    def __init__(self, visual: nn.Module, num_classes: int, normalize: bool):
        super().__init__()
        self.visual = visual
        embed_dim = visual.proj.shape[1] if visual.proj is not None else visual.transformer.width
        self.classifier = nn.Linear(embed_dim, num_classes)
        self.normalize = normalize

    def classify_pooled(self, pooled: Tensor) -> Tensor:
        if self.visual.proj is not None:
            pooled = pooled @ self.visual.proj
        if self.normalize:
            pooled = pooled / pooled.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return self.classifier(pooled)

    def forward(self, x: Tensor) -> Tensor:
        v = self.visual
        tokens = v.transformer(v._embeds(x))
        pooled, _ = v._pool(tokens)
        return self.classify_pooled(pooled)


class OpenClipViT(BackboneAdapter):
    kind = "vit"
    library = "open_clip"

    def vit_parts(self) -> ViTParts:
        m = self.model
        v = m.visual
        if not getattr(v.transformer, "batch_first", True):
            raise UnsupportedModelError("open_clip transformers with batch_first=False are not supported.")
        block = v.transformer.resblocks[-1]
        if hasattr(block, "ln_1_kv") or not isinstance(block.attn, nn.MultiheadAttention):
            raise UnsupportedModelError(f"open_clip/{self.name}: the last block is not a plain self-attention block.")

        def prefix(x: Tensor) -> Tensor:
            x = v._embeds(x)
            for blk in v.transformer.resblocks[:-1]:
                x = blk(x)
            return x

        def head_tokens(y: Tensor) -> Tensor:
            pooled, _ = v._pool(y)
            return m.classify_pooled(pooled)

        def head_cls(cls_vec: Tensor) -> Tensor:
            return m.classify_pooled(v.ln_post(cls_vec))

        token_pool = v.attn_pool is None and v.pool_type == "tok"
        grid = tuple(v.grid_size)
        return ViTParts(
            prefix=prefix,
            norm1=block.ln_1,
            attention=mha_self_attention(block.attn),
            ls1=block.ls_1,
            norm2=block.ln_2,
            mlp=block.mlp,
            ls2=block.ls_2,
            head_tokens=head_tokens,
            head_cls=head_cls if token_pool else None,
            attn_weights=mha_weights(block.attn),
            grid=(int(grid[0]), int(grid[1])),
            num_prefix_tokens=1,
        )


def build_open_clip(name: str, num_classes: int, pretrained: str | None, kwargs: dict) -> BackboneAdapter:
    from .._compat import ensure_torchvision

    ensure_torchvision()
    import open_clip

    kwargs = dict(kwargs)
    normalize = bool(kwargs.pop("normalize", False))
    try:
        clip = open_clip.create_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as e:
        raise UnsupportedModelError(
            f"open_clip cannot build {name!r}: {e}. List names with open_clip.list_models()."
        ) from e
    visual = clip.visual
    if not hasattr(visual, "transformer") or not hasattr(visual, "_embeds"):
        raise UnsupportedModelError(f"open_clip/{name} has no ViT image encoder (got {type(visual).__name__}).")
    return OpenClipViT(OpenClipClassifier(visual, num_classes, normalize), name, num_classes)
