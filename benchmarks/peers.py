"""Peer XAI implementations for the benchmarks: the command line, and one import for the public functions.

The peers live in their own modules:

* ``peers_venv.py``: openvino-xai's virtualenv (``.venv-peers``): setup, checks, and running code in it;
* ``peers_openvino_xai.py``: openvino-xai 1.1's ViT-ReciproCAM (latency benchmark) and black-box RISE (quality
  baseline), each with a parent side (main interpreter) and a worker that runs in the venv;
* ``peers_grad_cam.py``: pytorch-grad-cam's Grad-CAM and Score-CAM (quality baselines, main environment; not
  imported here, since this file also runs under the peer venv's interpreter, which has no torch).

Usage::

    python benchmarks/peers.py setup                      # create .venv-peers and install the pinned peer set
    python benchmarks/peers.py ovxai-vit --onnx vit.onnx --precision f32 --batch 1 --repeats 10 --json out.json
    python benchmarks/peers.py selftest                   # random-weight timm ViT-B/16 -> ONNX -> ovxai-vit
    python benchmarks/peers.py ovxai-rise --onnx cls.onnx --inputs in.npz --out out.npz --num-masks 2000

From the main benchmark::

    from peers import peer_available, run_ovxai_vit, run_ovxai_rise

    if peer_available(".venv-peers"):
        records = run_ovxai_vit("vit.onnx", "f32", 1, 10, 2, 2, ".venv-peers")
        saliency, meta = run_ovxai_rise("cls.onnx", images, targets, num_masks=2000)  # quality baseline

``ovxai-rise`` is the second peer: openvino-xai's black-box RISE, used as a saliency-map baseline (not timed against
the engine); ``IN.npz`` holds already-normalised ``images`` (N,3,224,224) float32 and ``targets`` (N,) int64. It
re-executes itself under the peer venv's interpreter; ``ovxai-vit`` and ``selftest`` run in the main environment
(the timing statistics use ``engine.report``) and start the venv's worker themselves.

Only the standard library is imported at module level.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # benchmarks/ is no package: make the siblings importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers_openvino_xai import (  # noqa: E402
    BACKEND,
    METHOD,
    PRECISIONS,
    RISE_METHOD,
    RISE_NORMALISATION,
    check_onnx,
    export_random_vit,
    find_vit_target_layer,
    format_records,
    ovxai_rise_worker,
    ovxai_vit_worker,
    run_ovxai_rise,
    run_ovxai_vit,
    selftest,
    time_interleaved,
    vit_records,
)
from peers_venv import (  # noqa: E402
    DEFAULT_VENV,
    PEER_DEPENDENCIES,
    PEER_PACKAGE,
    REPO_ROOT,
    PeerError,
    inside_venv,
    peer_available,
    reexec_in_venv,
    setup_venv,
    venv_python,
)

SCRIPT = Path(__file__).resolve()

__all__ = [
    "BACKEND",
    "DEFAULT_VENV",
    "METHOD",
    "PEER_DEPENDENCIES",
    "PEER_PACKAGE",
    "PRECISIONS",
    "REPO_ROOT",
    "RISE_METHOD",
    "RISE_NORMALISATION",
    "PeerError",
    "export_random_vit",
    "find_vit_target_layer",
    "main",
    "ovxai_rise_worker",
    "ovxai_vit_worker",
    "peer_available",
    "run_ovxai_rise",
    "run_ovxai_vit",
    "selftest",
    "setup_venv",
    "time_interleaved",
    "venv_python",
    "vit_records",
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peers.py",
        description="Run peer XAI implementations (openvino-xai) in their own virtualenv for the latency benchmark.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("setup", help="create the peer venv and install openvino-xai 1.1.0 with its pinned set")
    p.add_argument("--venv", default=str(DEFAULT_VENV), help="venv directory (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="reinstall even if the venv already imports openvino_xai")

    p = sub.add_parser("ovxai-vit", help="time openvino-xai ViT-ReciproCAM vs plain classification on an ONNX model")
    p.add_argument("--onnx", required=True, help="ONNX classifier: input 'image' (B,3,224,224), output 'logits'")
    p.add_argument("--precision", choices=PRECISIONS, default="f32", help="INFERENCE_PRECISION_HINT")
    p.add_argument("--batch", type=int, default=1, help="batch (openvino-xai white-box supports 1; see 'note')")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before each measurement")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="INFERENCE_NUM_THREADS")
    p.add_argument("--json", required=True, help="write the records to this JSON file")
    p.add_argument("--model-name", default=None, help="the 'model' key (default: the ONNX file's stem)")
    p.add_argument("--target-layer", default=None, help="friendly name of the residual Add before the last block")
    p.add_argument("--all-targets", action="store_true", help="also time explainer(x) for all classes")
    p.add_argument("--venv", default=str(DEFAULT_VENV), help="peer venv directory (default: %(default)s)")

    p = sub.add_parser("ovxai-rise", help="openvino-xai black-box RISE saliency maps (quality baseline)")
    p.add_argument("--onnx", required=True, help="ONNX classifier: input 'image' (B,3,224,224), output 'logits'")
    p.add_argument("--inputs", required=True, help=".npz: images (N,3,224,224) float32 normalised, targets (N,) int")
    p.add_argument("--out", required=True, help=".npz to write: saliency (N,H,W) float32, meta (JSON string)")
    p.add_argument("--num-masks", type=int, default=2000, help="random masks per image (default: %(default)s)")
    p.add_argument("--prob", type=float, default=0.5, help="probability a mask cell is kept (default: %(default)s)")
    p.add_argument(
        "--num-cells", type=int, default=8, help="mask grid cells per side, openvino-xai's num_cells (default: 8)"
    )
    p.add_argument("--seed", type=int, default=0, help="mask seed (default: %(default)s)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="INFERENCE_NUM_THREADS")
    p.add_argument("--precision", choices=PRECISIONS, default="f32", help="INFERENCE_PRECISION_HINT")
    p.add_argument("--venv", default=str(DEFAULT_VENV), help="peer venv directory (default: %(default)s)")

    p = sub.add_parser("selftest", help="export a random-weight timm ViT-B/16 and run ovxai-vit on it")
    p.add_argument("--venv", default=str(DEFAULT_VENV), help="peer venv directory (default: %(default)s)")
    p.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated (default: %(default)s)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="default: the CPU count")
    p.add_argument("--keep-onnx", default=None, help="write the ONNX model here and keep it")
    p.add_argument("--json", default=None, help="also write the records to this JSON file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        if args.command == "setup":
            setup_venv(args.venv, force=args.force)
        elif args.command == "ovxai-vit":
            records = run_ovxai_vit(
                args.onnx,
                args.precision,
                args.batch,
                args.repeats,
                args.warmup,
                args.threads,
                args.venv,
                model_name=args.model_name,
                target_layer=args.target_layer,
                all_targets=args.all_targets,
                verbose=True,
            )
            Path(args.json).write_text(json.dumps(records, indent=2))
            print(format_records(records))
        elif args.command == "ovxai-rise":
            check_onnx(args.onnx)
            if not Path(args.inputs).is_file():
                raise PeerError(f"inputs not found: {args.inputs}; write an .npz with 'images' and 'targets'")
            if not inside_venv(args.venv):
                reexec_in_venv(args.venv, SCRIPT, argv)
            meta = ovxai_rise_worker(
                args.onnx,
                args.inputs,
                args.out,
                num_masks=args.num_masks,
                prob=args.prob,
                num_cells=args.num_cells,
                seed=args.seed,
                threads=args.threads,
                precision=args.precision,
            )
            print(json.dumps(meta))
        elif args.command == "selftest":
            precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
            selftest(
                args.venv,
                precisions,
                args.batch,
                args.repeats,
                args.warmup,
                args.threads,
                args.keep_onnx,
                args.json,
            )
    except PeerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
