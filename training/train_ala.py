"""Train ALA (Attention Lattice Adapter + LoRA, with the Alternating Epoch Architect) and write an artifact folder.

Examples::

    # the paper's setting: CLIP ViT-B/16 at 384, CUB-200-2011
    python training/train_ala.py --backbone open_clip/ViT-B-16 --source pretrained \\
        --backbone-option pretrained=openai \\
        --data cub --split cub-split.json --preset cub --out artifacts/ala-clip-cub

    # the run committed here: EfficientNet-Lite0 (real ImageNet weights) on kahikatea at 224
    python training/train_ala.py --backbone timm/tf_efficientnet_lite0 --data kahikatea \\
        --split benchmarks/results/ala-kahikatea/split.json --input-size 224 --out artifacts/ala-lite0-kahikatea

The generic loop and checkpointing live in ``training/core.py``, ALA's loss, AEA and optimiser in ``training/ala.py``;
this script only parses arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: the `training` package

from engine.requires import require_torch_or_exit  # noqa: E402

# one message and exit code 2 in an install without torch (training.* imports torch)
require_torch_or_exit("training/train_ala.py", "training ALA")

from training.ala import DEFAULT_LAMBDA, ALAConfig, train  # noqa: E402
from training.cli import (  # noqa: E402
    add_backbone_arguments,
    add_data_arguments,
    add_run_arguments,
    add_schedule_arguments,
    common_config,
    run_main,
)


def _taps(text: str) -> list[int] | str:
    if text in ("paper", "spread", "none"):
        return text
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--taps must be paper, spread, none or comma-separated tap indices, got {text!r}"
        ) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="train_ala.py",
        description="Train ALA (adapter + LoRA + perception branch) with the Alternating Epoch Architect on a "
        "labelled dataset; AdamW, CE(PB) + lambda CE(ALA), early stopping on the validation loss; write an artifact "
        "folder that Engine.load and export/*.py accept.",
    )
    add_backbone_arguments(p, "encoder")
    add_data_arguments(p, "kahikatea, cub, imagenet-s, folder, ...")
    p.add_argument("--classes", type=int, default=None, help="classes of the perception branch (default: dataset's)")
    p.add_argument("--preset", choices=("cub", "imagenet-s"), default="cub", help="adapter size (paper's Table 1)")
    p.add_argument("--dim", type=int, default=None, help="adapter width (overrides the preset)")
    p.add_argument("--depth", type=int, default=None, help="adapter layers (overrides the preset)")
    p.add_argument("--heads", type=int, default=None, help="adapter heads (overrides the preset)")
    p.add_argument(
        "--taps",
        type=_taps,
        default="paper",
        help="encoder taps into the lattice: paper ([0,1,2,3]), spread ([0,3,6,9]), none, or indices",
    )
    p.add_argument("--lora-rank", type=int, default=8, help="LoRA rank on the encoder (0: no LoRA)")
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lora-block", default=None, help="encoder block with LoRA (default: the last)")
    p.add_argument("--pb-channels", type=int, default=128, help="perception-branch width")
    p.add_argument(
        "--lam", type=float, default=DEFAULT_LAMBDA, help=f"weight of CE(ALA) (default {DEFAULT_LAMBDA:.4g})"
    )
    p.add_argument("--no-aea", action="store_true", help="train every epoch with alpha (the ablation without AEA)")
    add_schedule_arguments(p, epochs=120, batch_size=8, lr=5e-5, weight_decay=1e-4, lr_help="AdamW learning rate")
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs (0: none)")
    p.add_argument("--input-size", type=int, default=None, help="input side (default: the preset's 384)")
    p.add_argument("--crop-scale", type=float, default=0.75, help="random-crop scale (1: no crops)")
    add_run_arguments(p)
    return p.parse_args(argv)  # fmt: skip


def config_from_args(args: argparse.Namespace, argv: list[str]) -> ALAConfig:
    """The run's :class:`ALAConfig` from parsed arguments (``argv`` is recorded in the manifest)."""
    return ALAConfig(
        **common_config(args, "training/train_ala.py", argv),
        classes=args.classes,
        preset=args.preset,
        dim=args.dim,
        depth=args.depth,
        heads=args.heads,
        taps=args.taps,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_block=args.lora_block,
        pb_channels=args.pb_channels,
        lam=args.lam,
        aea=not args.no_aea,
        patience=args.patience or None,
        crop_scale=None if args.crop_scale >= 1 else args.crop_scale,
    )


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, train, write the artifact; errors print one line and return 2."""
    return run_main(
        argv,
        parse_args,
        config_from_args,
        train,
        lambda v: f"val loss {v['loss']:.4f}  accuracy {v['acc']:.3f}  (ALA classifier {v['acc_ala']:.3f})",
    )


if __name__ == "__main__":
    sys.exit(main())
