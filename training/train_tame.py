"""Train T-TAME on a frozen backbone and write an artifact folder.

Example::

    python training/train_tame.py --backbone timm/tf_efficientnet_lite0 --data imagenet-sample \\
        --val-size 200 --epochs 8 --batch-size 16 --lr 1e-3 --seed 0 --out artifacts/tame-lite0

The generic loop and checkpointing live in ``training/core.py``, T-TAME's loss and schedule in ``training/tame.py``;
this script only parses arguments.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: the `training` package

from engine.cli import parse_options  # noqa: E402
from engine.errors import EngineError  # noqa: E402
from training.tame import LossWeights, TameConfig, train  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="train_tame.py",
        description="Train the T-TAME explainer (SGD + OneCycleLR, loss of T-TAME Eqs. 11-17) on a frozen "
        "backbone; validate AD/IC at 15%% each epoch; write an artifact folder that Engine.load and "
        "export/to_onnx.py accept.",
    )
    p.add_argument("--backbone", required=True, help="LIBRARY/NAME, e.g. timm/tf_efficientnet_lite0")
    p.add_argument(
        "--source",
        choices=("package", "random", "pretrained"),
        default=None,
        help="backbone weights (default: package where one is known, else pretrained)",
    )
    p.add_argument("--weights", default=None, help="local .safetensors classifier state dict (overrides --source)")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (default 1000)")
    p.add_argument(
        "--backbone-option",
        action="append",
        default=[],
        help="backbone constructor option KEY=VALUE (repeatable), e.g. fused=true for ../shared/weights MobileNetV2",
    )
    p.add_argument("--taps", default=None, help="comma-separated backbone module paths (default: the explainer's)")
    p.add_argument(
        "--data", default="folder", help="engine.data dataset: folder, imagenet-sample, ... (default folder)"
    )
    p.add_argument("--data-root", default=None, help="dataset folder (default: the dataset's folder in ../shared/data)")
    p.add_argument("--val-size", type=int, default=200, help="held-out validation images (default 200)")
    p.add_argument(
        "--split",
        default=None,
        help="a split file (training/make_split.py): train on its train part, validate on its val part "
        "(overrides --val-size)",
    )
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3, help="maximum learning rate of OneCycleLR (default 1e-3)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input-size", type=int, default=None, help="override the input size (square side; smoke runs)")
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flips of training images")
    p.add_argument("--lambda1", type=float, default=1.5, help="weight of the cross-entropy term (Eq. 11)")
    p.add_argument("--lambda2", type=float, default=2.0, help="weight of the TV' term (Eq. 11)")
    p.add_argument("--lambda3", type=float, default=0.005, help="weight of V inside TV' (Eq. 15)")
    p.add_argument("--lambda4", type=float, default=0.3, help="exponent of the area term E (Eq. 16)")
    p.add_argument("--out", required=True, help="artifact folder to write")
    p.add_argument("--workdir", default=None, help="checkpoint + train_log.jsonl folder (default: <out>-work)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --workdir")
    p.add_argument("--max-steps", type=int, default=None, help="stop this run after N optimiser steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--fusion-init",
        choices=("random", "classifier"),
        default="random",
        help="random: the paper's init; classifier: start from the backbone's CAM (needs a tap that feeds the "
        "classifier through a global average pool; for data with few images per class, see the README)",
    )
    p.add_argument(
        "--embed-backbone",
        action="store_true",
        help="store the whole graph in the artifact (default: only the trained head, with the backbone named by "
        "its package / pretrained tag / weights file + sha256)",
    )
    return p.parse_args(argv)  # fmt: skip


def config_from_args(args: argparse.Namespace, argv: list[str]) -> TameConfig:
    """The run's :class:`TameConfig` from parsed arguments (``argv`` is recorded in the manifest)."""
    return TameConfig(
        backbone=args.backbone,
        out=args.out,
        source=args.source,
        weights=args.weights,
        num_classes=args.num_classes,
        backbone_kwargs=parse_options(args.backbone_option),
        taps=[t.strip() for t in args.taps.split(",")] if args.taps else None,
        data=args.data,
        data_root=args.data_root,
        val_size=args.val_size,
        split=args.split,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        seed=args.seed,
        input_size=args.input_size,
        flip=not args.no_flip,
        loss=LossWeights(args.lambda1, args.lambda2, args.lambda3, args.lambda4),
        workdir=args.workdir,
        resume=args.resume,
        max_steps=args.max_steps,
        command=shlex.join(["python", "training/train_tame.py", *argv]),
        progress=not args.no_progress,
        embed_backbone=args.embed_backbone,
        fusion_init=args.fusion_init,
    )


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, train, write the artifact; errors print one line and return 2."""
    args = parse_args(argv)
    try:
        art = train(config_from_args(args, sys.argv[1:] if argv is None else list(argv)))
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t = art.manifest["training"]["final_val"]
    print(f"wrote {art.path}: val AD@15 {t['ad@15']:.2f}  IC@15 {t['ic@15']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
