"""Train T-TAME on a frozen backbone and write an artifact folder.

Example::

    python training/train_tame.py --backbone timm/tf_efficientnet_lite0 --data imagenet-sample \\
        --val-size 200 --epochs 8 --batch-size 16 --lr 1e-3 --seed 0 --out artifacts/tame-lite0

The generic loop and checkpointing live in ``training/core.py``, T-TAME's loss and schedule in ``training/tame.py``;
this script only parses arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: the `training` package

from engine.requires import require_torch_or_exit  # noqa: E402

# one message and exit code 2 in an install without torch (training.* imports torch)
require_torch_or_exit("training/train_tame.py", "training T-TAME")

from training.cli import (  # noqa: E402
    add_backbone_arguments,
    add_data_arguments,
    add_run_arguments,
    add_schedule_arguments,
    common_config,
    run_main,
)
from training.tame import LossWeights, TameConfig, train  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="train_tame.py",
        description="Train the T-TAME explainer (SGD + OneCycleLR, loss of T-TAME Eqs. 11-17) on a frozen "
        "backbone; validate AD/IC at 15%% each epoch; write an artifact folder that Engine.load and "
        "export/to_onnx.py accept.",
    )
    add_backbone_arguments(p)
    p.add_argument("--taps", default=None, help="comma-separated backbone module paths (default: the explainer's)")
    add_data_arguments(p)
    add_schedule_arguments(
        p, epochs=8, batch_size=16, lr=1e-3, weight_decay=5e-4, lr_help="maximum learning rate of OneCycleLR"
    )
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--input-size", type=int, default=None, help="override the input size (square side; smoke runs)")
    p.add_argument("--lambda1", type=float, default=1.5, help="weight of the cross-entropy term (Eq. 11)")
    p.add_argument("--lambda2", type=float, default=2.0, help="weight of the TV' term (Eq. 11)")
    p.add_argument("--lambda3", type=float, default=0.005, help="weight of V inside TV' (Eq. 15)")
    p.add_argument("--lambda4", type=float, default=0.3, help="exponent of the area term E (Eq. 16)")
    p.add_argument(
        "--fusion-init",
        choices=("random", "classifier"),
        default="random",
        help="random: the paper's init; classifier: start from the backbone's CAM (needs a tap that feeds the "
        "classifier through a global average pool; for data with few images per class, see the README)",
    )
    add_run_arguments(p)
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace, argv: list[str]) -> TameConfig:
    """The run's :class:`TameConfig` from parsed arguments (``argv`` is recorded in the manifest)."""
    return TameConfig(
        **common_config(args, "training/train_tame.py", argv),
        taps=[t.strip() for t in args.taps.split(",")] if args.taps else None,
        momentum=args.momentum,
        loss=LossWeights(args.lambda1, args.lambda2, args.lambda3, args.lambda4),
        fusion_init=args.fusion_init,
    )


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, train, write the artifact; errors print one line and return 2."""
    return run_main(
        argv, parse_args, config_from_args, train, lambda v: f"val AD@15 {v['ad@15']:.2f}  IC@15 {v['ic@15']:.2f}"
    )


if __name__ == "__main__":
    sys.exit(main())
