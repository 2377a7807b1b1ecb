"""ALA: the Attention Lattice Adapter (ICONIP 2025, ``ala_iconip2025.txt`` section 4; ``ala_jsai_ja.txt`` section 3;
METHODS.md section 3), trained with the Alternating Epoch Architect (``training/ala.py``).

One forward pass gives the class and the explanation::

    encoder (frozen, LoRA on one block)    h_v^(0), h_v^(1), ..., h_v^(k)       taps, as maps (B, C_i, h_i, w_i)
    ALA former part                        t = patch_embed(x) + pos              (B, N, d) on the adapter's grid g x g
                                           before layer i (i = 1..len(taps)):    t += proj_i(h_v^(tap_i))
                                           h_l = LN(layers(t))                   (B, d, g, g)
    ALA latter part                        alpha = sigmoid(f1(h_l))              (B, 1, g, g), the attention map
                                           p_ALA = GAP(f2(h_l))                  (B, C), the ALA class prediction
    perception branch                      p_PB = f_PB(alpha * h_v^(k))          (B, C), the class

* ``proj_i``: LayerNorm over the tap's channels, 1x1 conv to ``d``, then resized to the adapter's grid (average
  pooling when the tap is an integer multiple of the grid, bilinear otherwise).
* ``f1``: 3x3 conv (d -> d), ReLU, 1x1 conv (d -> 1); sigmoid. ``f2`` (as the authors' prototype): BatchNorm,
  1x1 conv (d -> 32), ReLU, 1x1 conv (32 -> C), global average pool. Both read the adapter features ``h_l`` (the
  Japanese paper and ABN; the English paper's equation feeds h_ALA, see METHODS.md).
* ``f_PB``: on the last tap ``h_v^(k)`` resized to the grid: 1x1 conv (C_k -> w), BatchNorm, ReLU, then two stages
  of (3x3 conv, BatchNorm, ReLU, 2x2 max-pool), global average pool, dropout, FC (w -> w), ReLU, FC (w -> C). The
  prototype's stages were 3x3 convs on the full C_k channels; the 1x1 reduction to ``w = pb_channels`` keeps the branch
  cheap next to small encoders (EfficientNet-Lite0), which the latency target needs.
* Encoder taps: ``adapter.encoder_taps()`` lists h_v^(0) (the input of block 1) .. h_v^(k) (the output of the last
  block) for ViTs and the stage outputs for CNNs; ``taps`` picks which feed the lattice (``"paper"`` = [0, 1, 2, 3],
  ``"spread"`` = [0, 3, 6, 9], the prototype's; ``"none"`` = no lattice, the ablation) and ``last_tap`` which one is
  h_v^(k) (default: the last).
* LoRA (``W = W0 + B A``) on one encoder block, in the backbone's delta slot (``engine/backbones/lora.py``: a torch
  parametrization, not peft's wrappers, so the module tree stays plain and the merge at export is exact): by default
  the last block's attention q and v projections (ViTs) or the 1x1 convs of the last stage (CNNs), rank 8;
  ``lora_rank=0`` is the ablation without LoRA.
* ViT encoders run at the graph's input size: the position embedding is interpolated to it (the paper: CLIP ViT-B/16
  at 384); a size the patch grid cannot take is refused.

Inference output: ``(p_PB logits, alpha min-max scaled per image)`` on the adapter's grid. The map is class-agnostic:
``target`` does not change it (it still is an input of the graph, like every method's).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError, UnsupportedModelError
from ..numeric import minmax
from .base import Explainer, probe_taps, register_explainer

#: The paper's Table 1: adapter width, depth and heads per dataset; the input size the paper used with CLIP.
PRESETS = {
    "cub": {"dim": 64, "depth": 8, "heads": 4, "input_size": 384},
    "imagenet-s": {"dim": 240, "depth": 8, "heads": 6, "input_size": 384},
}
PRESET_KEYS = ("dim", "depth", "heads")
#: Named tap lists (indices into the encoder's tap sequence h_v^(0..k)).
TAP_PRESETS = {"paper": [0, 1, 2, 3], "spread": [0, 3, 6, 9], "none": []}


class AdapterLayer(nn.Module):
    """A pre-norm transformer layer: ``x + attn(LN(x))``, ``x + mlp(LN(x))`` (plain matmul / softmax attention, so
    it exports to any runtime)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if dim % heads:
            raise InputError(f"ala: the adapter width {dim} is not divisible by its {heads} heads.")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        h = self.heads
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)  # (3, B, h, N, d/h)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(d // h)), dim=-1)
        y = torch.matmul(attn, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(y)
        return x + self.mlp(self.norm2(x))


class TapProjection(nn.Module):
    """LayerNorm over a tap's channels, 1x1 conv to the adapter width, resize to the adapter's grid."""

    def __init__(self, channels: int, dim: int, grid: tuple[int, int]):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.conv = nn.Conv2d(channels, dim, kernel_size=1)
        self.grid = grid

    def forward(self, m: Tensor) -> Tensor:
        m = self.norm(m.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return resize_to_grid(self.conv(m), self.grid)


def resize_to_grid(m: Tensor, grid: tuple[int, int]) -> Tensor:
    """A map (B, C, h, w) on the grid: itself, an average pool by an integer factor, or a bilinear resize."""
    h, w = int(m.shape[-2]), int(m.shape[-1])
    if (h, w) == tuple(grid):
        return m
    if h % grid[0] == 0 and w % grid[1] == 0 and h >= grid[0] and w >= grid[1]:
        k = (h // grid[0], w // grid[1])
        return F.avg_pool2d(m, kernel_size=k, stride=k)
    return F.interpolate(m, size=tuple(grid), mode="bilinear", align_corners=False)


class LatticeAdapter(nn.Module):
    """ALA itself: the former part (patch embedding, tap lattice, transformer layers) and the latter part (f1 -> alpha,
    f2 -> the ALA class prediction). Everything AEA freezes on even epochs lives here."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        patch: int,
        grid: tuple[int, int],
        tap_channels: list[int],
        num_classes: int,
        mlp_ratio: float,
    ):
        super().__init__()
        self.grid = grid
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.tap_proj = nn.ModuleList([TapProjection(c, dim, grid) for c in tap_channels])
        self.layers = nn.ModuleList([AdapterLayer(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.f1 = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, padding=1), nn.ReLU(), nn.Conv2d(dim, 1, kernel_size=1)
        )
        self.f2 = nn.Sequential(
            nn.BatchNorm2d(dim), nn.Conv2d(dim, 32, kernel_size=1), nn.ReLU(), nn.Conv2d(32, num_classes, kernel_size=1)
        )

    def forward(self, x: Tensor, taps: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The raw attention map (B, 1, g, g) before the sigmoid, and the ALA logits (B, C)."""
        h_l = self.features(x, taps)
        return self.f1(h_l), self.f2(h_l).mean(dim=(2, 3))

    def attention(self, x: Tensor, taps: list[Tensor]) -> Tensor:
        """The raw attention map only (inference: the ALA logits of f2 are not needed)."""
        return self.f1(self.features(x, taps))

    def features(self, x: Tensor, taps: list[Tensor]) -> Tensor:
        """The former part's output h_l (B, d, g, g)."""
        t = self.patch_embed(x)
        b, d, gh, gw = t.shape
        t = t.flatten(2).transpose(1, 2) + self.pos_embed
        for i, layer in enumerate(self.layers):
            if i < len(taps):
                t = t + self.tap_proj[i](taps[i]).flatten(2).transpose(1, 2)
            t = layer(t)
        return self.norm(t).transpose(1, 2).reshape(b, d, gh, gw)


class PerceptionBranch(nn.Module):
    """f_PB: 1x1 conv reduction, two (3x3 conv, BN, ReLU, max-pool) stages, GAP, dropout, two FC layers."""

    def __init__(self, channels: int, width: int, num_classes: int, dropout: float):
        super().__init__()

        def stage(cin: int, k: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, width, k, padding=k // 2, bias=False), nn.BatchNorm2d(width), nn.ReLU()]

        self.features = nn.Sequential(
            *stage(channels, 1),
            *stage(width, 3),
            nn.MaxPool2d(2, ceil_mode=True),
            *stage(width, 3),
            nn.MaxPool2d(2, ceil_mode=True),
        )
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, num_classes)
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.head(self.features(z).mean(dim=(2, 3)))


@register_explainer("ala")
class ALA(Explainer):
    """Attention Lattice Adapter: class (perception branch) and attention map alpha in one pass. Trainable
    (``training/train_ala.py``): the adapter, the perception branch and the encoder's LoRA deltas train; the head
    saved with an artifact holds all three (the deltas under ``backbone.lora.``)."""

    #: graph builders interpolate a ViT encoder to the graph's input size before loading weights
    sets_input_size = True

    @dataclasses.dataclass
    class Options:
        """Attributes:
        preset: ``"cub"`` (d=64, 8 layers, 4 heads) or ``"imagenet-s"`` (d=240, 8 layers, 6 heads), the paper's
            Table 1; ``dim``, ``depth`` and ``heads`` override it.
        dim, depth, heads: the adapter's width, layers and attention heads (None: the preset's).
        patch: the adapter's patch size; the adapter's grid is the input size / patch.
        taps: which encoder taps feed adapter layers 1, 2, ...: a list of indices into the encoder's tap sequence
            h_v^(0..k), or ``"paper"`` ([0, 1, 2, 3]), ``"spread"`` ([0, 3, 6, 9], the prototype's), ``"none"``
            (no lattice).
        tap_modules: the encoder's tap sequence as module names, for an encoder without a known one
            (default: ``adapter.encoder_taps()``).
        last_tap: the index of h_v^(k), the tap the perception branch reads (default -1: the last).
        num_classes: classes of the perception branch and f2 (None: the backbone's).
        lora_rank: LoRA rank on the encoder (0: no LoRA).
        lora_alpha: LoRA scale numerator (the delta is ``alpha / rank * B A``).
        lora_block: the encoder block with LoRA (None: the last block's attention q/v, or a CNN's last stage).
        pb_channels: the perception branch's width.
        mlp_ratio: the adapter layers' MLP width / d.
        dropout: the perception branch's dropout before its FC layers.
        """

        preset: str = "cub"
        dim: int | None = None
        depth: int | None = None
        heads: int | None = None
        patch: int = 16
        taps: list[int] | str = "paper"
        tap_modules: list[str] | None = None
        last_tap: int = -1
        num_classes: int | None = None
        lora_rank: int = 8
        lora_alpha: float = 16.0
        lora_block: str | None = None
        pb_channels: int = 128
        mlp_ratio: float = 4.0
        dropout: float = 0.1

    def __init__(self, options: Options, backbone: nn.Module, input_size: tuple[int, int]):
        super().__init__(options, backbone, input_size)
        o = options
        if o.preset not in PRESETS:
            raise InputError(f"ala: unknown preset {o.preset!r}; choose one of {sorted(PRESETS)}.")
        preset = PRESETS[o.preset]
        dim, depth, heads = (preset[k] if getattr(o, k) is None else int(getattr(o, k)) for k in PRESET_KEYS)
        size = tuple(int(v) for v in input_size)
        if o.patch < 1 or size[0] % o.patch or size[1] % o.patch:
            raise InputError(
                f"ala: the input size {size} is not a multiple of the adapter's patch {o.patch}; use e.g. "
                f"{max(o.patch, size[0] // o.patch * o.patch)} or {(size[0] // o.patch + 1) * o.patch}."
            )
        self.grid = (size[0] // o.patch, size[1] // o.patch)
        if backbone.kind == "vit":
            backbone.set_input_size(size)
        self.lattice_taps, self.last_tap = self._resolve_taps(o, backbone)
        if depth < len(self.lattice_taps):
            raise InputError(
                f"ala: {len(self.lattice_taps)} taps feed adapter layers 1..{len(self.lattice_taps)}, but the "
                f"adapter has {depth} layers; use fewer taps or a deeper adapter."
            )
        if o.lora_rank < 0:
            raise InputError(f"ala: lora_rank must be >= 0 (0: no LoRA), got {o.lora_rank}.")
        self.lora_targets: list[str] = []
        if o.lora_rank > 0:
            for target, parts in backbone.lora_targets(o.lora_block):
                self.lora_targets += backbone.add_lora([target], rank=o.lora_rank, alpha=o.lora_alpha, parts=parts)
        probe = next(backbone.parameters())
        logits, maps = probe_taps(backbone, self.tap_names, size)
        n_logits = int(logits.shape[-1])
        self.num_classes = n_logits if o.num_classes is None else int(o.num_classes)
        if self.num_classes < 1:
            raise InputError(f"ala: num_classes must be positive, got {o.num_classes}.")
        self.ala = LatticeAdapter(
            dim,
            depth,
            heads,
            o.patch,
            self.grid,
            [int(maps[t].shape[1]) for t in self.lattice_taps],
            self.num_classes,
            o.mlp_ratio,
        )
        self.pb = PerceptionBranch(int(maps[self.last_tap].shape[1]), o.pb_channels, self.num_classes, o.dropout)
        self.to(device=probe.device, dtype=probe.dtype)

    # --- taps ----------------------------------------------------------------------------------------------------
    @staticmethod
    def _resolve_taps(o: Options, backbone: nn.Module) -> tuple[list[str], str]:
        """The lattice taps and h_v^(k), as module names, from the encoder's tap sequence (or ``tap_modules``)."""
        if o.tap_modules is not None:
            if (
                isinstance(o.tap_modules, str)
                or not o.tap_modules
                or not all(isinstance(t, str) for t in o.tap_modules)
            ):
                raise InputError(f"ala: tap_modules must be a non-empty list of module names, got {o.tap_modules!r}.")
            known = set(backbone.tap_names())
            missing = [t for t in o.tap_modules if t not in known]
            if missing:
                raise UnsupportedModelError(
                    f"ala: the encoder {backbone.library}/{backbone.name} has no module(s) {missing}; fix tap_modules "
                    "(list the names with adapter.tap_names())."
                )
            sequence = list(o.tap_modules)
        else:
            sequence = list(backbone.encoder_taps())  # raises, naming tap_modules, where none is known
        if isinstance(o.taps, str):
            if o.taps not in TAP_PRESETS:
                raise InputError(f"ala: taps {o.taps!r} is not one of {sorted(TAP_PRESETS)} or a list of indices.")
            indices = TAP_PRESETS[o.taps]
        else:
            indices = list(o.taps)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in [*indices, o.last_tap]):
            raise InputError(f"ala: taps and last_tap are integer indices into the encoder's taps, got {o.taps!r}.")
        n = len(sequence)
        bad = [i for i in [*indices, o.last_tap] if not -n <= i < n]
        if bad:
            raise UnsupportedModelError(
                f"ala: the encoder has {n} taps h_v^(0..{n - 1}) ({sequence[0]} .. {sequence[-1]}), so tap(s) {bad} "
                f"do not exist. Choose indices below {n} (option taps), e.g. taps='paper' ([0, 1, 2, 3])."
            )
        return [sequence[i] for i in indices], sequence[o.last_tap]

    @property
    def tap_names(self) -> list[str]:
        """Every module the graph taps (the lattice taps and the last tap, each once)."""
        return list(dict.fromkeys([*self.lattice_taps, self.last_tap]))

    # --- forward -------------------------------------------------------------------------------------------------
    def encode(self, backbone: nn.Module, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """The lattice taps (as maps) and h_v^(k) on the adapter's grid."""
        _, maps = backbone.tap_maps(x, self.tap_names)
        return [maps[t] for t in self.lattice_taps], resize_to_grid(maps[self.last_tap], self.grid)

    def training_forward(self, backbone: nn.Module, x: Tensor, use_alpha: bool = True) -> dict[str, Tensor]:
        """What the loss needs: ``pb`` (perception-branch logits), and with ``use_alpha`` (odd AEA epochs) ``ala``
        (the ALA logits) and ``alpha`` (B, 1, g, g) in (0, 1). Without it, h_ALA = 1 and ALA is not run at all."""
        lattice, h_k = self.encode(backbone, x)
        if not use_alpha:
            return {"pb": self.pb(h_k)}
        raw, ala_logits = self.ala(x, lattice)
        alpha = torch.sigmoid(raw)
        return {"pb": self.pb(alpha * h_k), "ala": ala_logits, "alpha": alpha}

    def forward(self, backbone: nn.Module, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Perception-branch logits and alpha, min-max scaled per image (B, g, g); ``target`` does not change alpha."""
        lattice, h_k = self.encode(backbone, x)
        alpha = torch.sigmoid(self.ala.attention(x, lattice))
        logits = self.pb(alpha * h_k)
        # The map is class-agnostic; the target input stays in the graph (a zero-weight term) so every method's
        # exported graph has the same inputs.
        sal = minmax(alpha.flatten(1)) + 0.0 * target.to(alpha.dtype)[:, None]
        return logits, sal.reshape(-1, *self.grid)

    # --- the trainable protocol ----------------------------------------------------------------------------------
    def ala_parameters(self) -> list[nn.Parameter]:
        """ALA's own parameters (what AEA freezes on even epochs)."""
        return list(self.ala.parameters())

    def trainable_parameters(self, backbone: nn.Module) -> list[nn.Parameter]:
        """The adapter, the perception branch and the encoder's LoRA deltas."""
        return [*self.ala.parameters(), *self.pb.parameters(), *backbone.delta_parameters()]

    def options_dict(self) -> dict:
        return dataclasses.asdict(self.options)
