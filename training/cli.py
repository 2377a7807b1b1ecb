"""What the training scripts' command lines share: the backbone, data and run arguments, the generic config keys
they give, and the main routine (errors print one line and exit 2). ``train_tame.py`` and ``train_ala.py`` add only
their method's arguments."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from typing import Any

from engine.cli import parse_options
from engine.errors import EngineError


def add_backbone_arguments(p: argparse.ArgumentParser, what: str = "backbone") -> None:
    """``--backbone --source --weights --num-classes --backbone-option``."""
    p.add_argument("--backbone", required=True, help=f"the {what}, LIBRARY/NAME, e.g. timm/tf_efficientnet_lite0")
    p.add_argument(
        "--source",
        choices=("package", "random", "pretrained"),
        default=None,
        help=f"{what} weights (default: package where one is known, else pretrained)",
    )
    p.add_argument("--weights", default=None, help="local .safetensors classifier state dict (overrides --source)")
    p.add_argument("--num-classes", type=int, default=1000, help=f"the {what}'s classifier outputs (default 1000)")
    p.add_argument("--backbone-option", action="append", default=[],
                   help="backbone constructor option KEY=VALUE (repeatable), e.g. fused=true for ../shared/weights "
                   "MobileNetV2")  # fmt: skip


def add_data_arguments(p: argparse.ArgumentParser, data_help: str = "folder, imagenet-sample, ...") -> None:
    """``--data --data-root --val-size --split``."""
    p.add_argument("--data", default="folder", help=f"engine.data dataset: {data_help} (default folder)")
    p.add_argument("--data-root", default=None, help="dataset folder (default: the dataset's folder in ../shared/data)")
    p.add_argument("--val-size", type=int, default=200, help="held-out validation images (default 200)")
    p.add_argument("--split", default=None,
                   help="a split file (training/make_split.py): train on its train part, validate on its val part "
                   "(overrides --val-size)")  # fmt: skip


def add_schedule_arguments(
    p: argparse.ArgumentParser, *, epochs: int, batch_size: int, lr: float, weight_decay: float, lr_help: str
) -> None:
    """``--epochs --batch-size --lr --weight-decay --seed --input-size --no-flip`` with the method's defaults."""
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--lr", type=float, default=lr, help=lr_help)
    p.add_argument("--weight-decay", type=float, default=weight_decay)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flips of training images")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """``--out --workdir --resume --max-steps --no-progress --embed-backbone``."""
    p.add_argument("--out", required=True, help="artifact folder to write")
    p.add_argument("--workdir", default=None, help="checkpoint + train_log.jsonl folder (default: <out>-work)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --workdir")
    p.add_argument("--max-steps", type=int, default=None, help="stop this run after N optimiser steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--embed-backbone", action="store_true",
                   help="store the whole graph in the artifact (default: only the trained head, with the backbone "
                   "named by its package / pretrained tag / weights file + sha256)")  # fmt: skip


def common_config(args: argparse.Namespace, script: str, argv: list[str]) -> dict[str, Any]:
    """The generic :class:`~training.core.TrainConfig` keys from the shared arguments (``argv`` is recorded)."""
    return {
        "backbone": args.backbone,
        "out": args.out,
        "source": args.source,
        "weights": args.weights,
        "num_classes": args.num_classes,
        "backbone_kwargs": parse_options(args.backbone_option),
        "data": args.data,
        "data_root": args.data_root,
        "val_size": args.val_size,
        "split": args.split,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "seed": args.seed,
        "input_size": args.input_size,
        "flip": not args.no_flip,
        "workdir": args.workdir,
        "resume": args.resume,
        "max_steps": args.max_steps,
        "command": shlex.join(["python", script, *argv]),
        "progress": not args.no_progress,
        "embed_backbone": args.embed_backbone,
    }


def run_main(
    argv: list[str] | None,
    parse_args: Callable[[list[str] | None], argparse.Namespace],
    make_config: Callable[[argparse.Namespace, list[str]], Any],
    train: Callable[[Any], Any],
    summary: Callable[[dict[str, Any]], str],
) -> int:
    """Parse, train, print ``wrote DIR: <summary of the final validation>``; an engine error prints one line, exit 2."""
    args = parse_args(argv)
    try:
        art = train(make_config(args, sys.argv[1:] if argv is None else list(argv)))
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {art.path}: {summary(art.manifest['training']['final_val'])}")
    return 0
