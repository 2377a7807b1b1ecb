"""Adapter over open_clip ViT image encoders, with a linear classifier on the image embedding.

The classifier is ``Linear(embed_dim, num_classes)``. For zero-shot use, load the class text embeddings (times the
logit scale) as its weight and set ``normalize=True`` so the image embedding is L2-normalised first; for a linear probe,
train it with ``normalize=False``.

Backbone kwargs of this library: ``normalize`` (above) and ``text_tower`` (keep CLIP's text encoder beside the adapter,
outside its state, so that :meth:`OpenClipViT.zero_shot_head` can build the classifier from class names; the text
tower is never saved in an artifact and never exported), plus open_clip's own ``create_model`` options.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import InputError, UnsupportedModelError
from .base import BackboneAdapter, ViTParts, children_names, mha_self_attention, mha_weights, resample_patch_grid
from .fetch import fetching, open_clip_source
from .taps import last_children


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
    DEFAULT_TAPS = {"*": last_children("visual.transformer.resblocks")}

    @property
    def prefix_tokens(self) -> int:
        return 1  # the class token

    @property
    def tokens_batch_first(self) -> bool:
        """The layout of the encoder blocks' outputs (``visual.transformer.batch_first``)."""
        return bool(getattr(self.model.visual.transformer, "batch_first", True))

    def _tap_batch_first(self, tap: str) -> bool:
        # the embedding (ln_pre and before) is always (B, T, D); a sequence-first transformer transposes inside
        return self.tokens_batch_first if tap.startswith("visual.transformer.") else True

    def encoder_taps(self) -> list[str]:
        """``visual.ln_pre`` (the embedded tokens that enter the first block), then
        ``visual.transformer.resblocks.0`` ... ``.{n-1}``."""
        return ["visual.ln_pre", *children_names(self.model, "visual.transformer.resblocks")]

    def _vit_lora_targets(self, block: str) -> list[tuple[str, list[str] | None]]:
        return self._attention_target(f"{block}.attn")

    @property
    def patch_size(self) -> tuple[int, int]:
        p = self.model.visual.patch_size
        return (int(p[0]), int(p[1])) if isinstance(p, tuple | list) else (int(p), int(p))

    @property
    def native_input_size(self) -> tuple[int, int]:
        size = self.model.visual.image_size
        return (int(size[0]), int(size[1])) if isinstance(size, tuple | list) else (int(size), int(size))

    def _set_input_size(self, size: tuple[int, int], grid: tuple[int, int], old_grid: tuple[int, int]) -> None:
        v = self.model.visual
        pos = v.positional_embedding  # (1 + grid, D): the class token's entry, then the grid
        with torch.no_grad():
            pos.data = resample_patch_grid(pos.detach().clone(), old_grid, grid, self.prefix_tokens)
        v.image_size = size
        v.grid_size = grid
        cfg = getattr(v, "preprocess_cfg", None)
        if isinstance(cfg, dict) and "size" in cfg:  # open_clip's preprocessing reads it (image_transform_v2)
            cfg["size"] = size

    # --- zero-shot head from class names (backbone kwarg text_tower=True) ---------------------------------------
    def keep_text_tower(self, clip: nn.Module) -> None:
        """Keep CLIP's text side outside the module tree: not in ``state_dict()``, not moved, never exported."""
        self.__dict__["_text_tower"] = clip

    @property
    def has_text_tower(self) -> bool:
        return self.__dict__.get("_text_tower") is not None

    @torch.no_grad()
    def zero_shot_head(
        self, class_names: Sequence[str], templates: Sequence[str] = ("a photo of a {}.",), batch: int = 64
    ) -> None:
        """Make the classifier CLIP's zero-shot classifier for ``class_names``.

        Each class's text embedding is the L2-normalised mean of the normalised embeddings of its prompts
        (``template.format(name)``); the classifier's weight becomes ``logit_scale * embedding`` (bias 0) and the
        image embedding is L2-normalised first (``normalize``), so logits are CLIP's
        ``logit_scale * cos(image, text)``.

        Raises:
            InputError: no text tower was kept (build with backbone kwarg ``text_tower=True``), or the number of
                names differs from the classifier's classes, or a template has no ``{}``.
        """
        import open_clip

        clip = self.__dict__.get("_text_tower")
        if clip is None:
            raise InputError(
                f"open_clip/{self.name} was built without its text tower; build it with backbone kwarg "
                "text_tower=True (CLI: --backbone-option text_tower=true) to make a zero-shot head."
            )
        if len(class_names) != self.num_classes:
            raise InputError(
                f"{len(class_names)} class names for a {self.num_classes}-class classifier; pass one name per class "
                f"(or build the backbone with num_classes={len(class_names)})."
            )
        if not templates or any("{}" not in t for t in templates):
            raise InputError(f"each prompt template needs a '{{}}' for the class name, got {list(templates)}.")
        tokenizer = open_clip.get_tokenizer(self.name)
        prompts = [t.format(name) for name in class_names for t in templates]
        emb = torch.cat([clip.encode_text(tokenizer(prompts[i : i + batch])) for i in range(0, len(prompts), batch)])
        emb = emb / emb.norm(dim=-1, keepdim=True)
        emb = emb.reshape(len(class_names), len(templates), -1).mean(dim=1)
        emb = emb / emb.norm(dim=-1, keepdim=True)
        classifier = self.model.classifier
        classifier.weight.copy_(float(clip.logit_scale.exp()) * emb.to(classifier.weight))
        classifier.bias.zero_()
        self.model.normalize = True

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

        def head_cls(cls_vec: Tensor) -> Tensor:  # the class token: (..., 1, D)
            return m.classify_pooled(v.ln_post(cls_vec[..., 0, :]))

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
            head_prefix=head_cls if token_pool else None,
            read_tokens=(0,),
            attn_weights=mha_weights(block.attn),
            grid=(int(grid[0]), int(grid[1])),
            num_prefix_tokens=self.prefix_tokens,
        )


def build_open_clip(name: str, num_classes: int, pretrained: str | None, kwargs: dict) -> BackboneAdapter:
    from .._compat import ensure_torchvision

    ensure_torchvision()
    import open_clip

    kwargs = dict(kwargs)
    normalize = bool(kwargs.pop("normalize", False))
    text_tower = bool(kwargs.pop("text_tower", False))
    guard = (
        fetching(f"open_clip/{name}", lambda: open_clip_source(name, pretrained, kwargs))
        if pretrained
        else contextlib.nullcontext()
    )
    try:
        with guard:  # pretrained: fail fast offline, one clear message when the download fails
            clip = open_clip.create_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as e:
        raise UnsupportedModelError(
            f"open_clip cannot build {name!r}: {e}. List names with open_clip.list_models()."
        ) from e
    visual = clip.visual
    if not hasattr(visual, "transformer") or not hasattr(visual, "_embeds"):
        raise UnsupportedModelError(f"open_clip/{name} has no ViT image encoder (got {type(visual).__name__}).")
    adapter = OpenClipViT(OpenClipClassifier(visual, num_classes, normalize), name, num_classes)
    if text_tower:
        clip.visual = None  # the image tower lives in the adapter; the rest (text tower, logit scale) is kept aside
        adapter.keep_text_tower(clip)
    return adapter
