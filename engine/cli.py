"""``xai-engine``: explain images, create artifacts, export them. Thin: parses arguments, calls the library."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from .errors import EngineError
from .preprocess.decode import IMAGE_SUFFIXES as IMAGE_SUFFIXES
from .preprocess.decode import list_image_files


def expand_images(paths: list[str]) -> list[Path]:
    """Files as given; folders expanded to their image files (``IMAGE_SUFFIXES``, not hidden; sorted, not recursive)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(list_image_files(p))
        else:
            out.append(p)
    return out


def _unique_stems(paths: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        stem = p.stem or "image"
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        stems.append(stem if n == 0 else f"{stem}_{n}")
    return stems


def _parse_target(value: str | None, class_names: list[str]) -> int | None:
    if value is None:
        return None
    if value.lstrip("-").isdigit():
        return int(value)
    if value in class_names:
        return class_names.index(value)
    raise EngineError(f"--target {value!r} is neither a class id nor a class name of this artifact.")


def cmd_explain(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .api import Engine
    from .preprocess import load_image

    engine = Engine.load(
        args.artifact,
        args.backend,
        device=args.device,
        precision=args.precision,
        threads=args.threads,
        allow_version_mismatch=args.allow_version_mismatch,
        max_pixels=args.max_pixels if args.max_pixels > 0 else None,
        batch_size=args.batch_size,
    )
    target = _parse_target(args.target, engine.class_names)
    images = expand_images(args.images)
    if not images:
        raise EngineError(f"no images found in {args.images}; give image files or folders holding images.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stems = _unique_stems(images)
    results_tmp = out / ".results.jsonl.tmp"
    done = failed = 0
    pending: list[tuple[Path, str, Any]] = []

    def flush(fh) -> None:
        nonlocal done
        if not pending:
            return
        exps = engine.explain_batch([img for _, _, img in pending], target, top_k=args.top_k)
        for (path, stem, _), exp in zip(pending, exps, strict=True):
            exp.source = str(path)
            files = exp.save(out, stem) if not args.no_images else {}
            if args.colormap != "jet" or args.alpha != 0.5:
                exp.overlay(alpha=args.alpha, colormap=args.colormap).save(out / f"{stem}.png")
            record = exp.to_dict() | {"files": {k: Path(v).name for k, v in files.items()}}
            fh.write(json.dumps(record) + "\n")
            done += 1
        pending.clear()

    with open(results_tmp, "w", encoding="utf-8") as fh:
        bar = tqdm(total=len(images), unit="img", disable=len(images) < 2 or args.quiet, file=sys.stderr)
        try:
            for path, stem in zip(images, stems, strict=True):
                try:
                    pending.append((path, stem, load_image(path, max_pixels=engine.max_pixels)))
                except EngineError as e:
                    failed += 1
                    bar.write(f"skipped {path}: {e}", file=sys.stderr)
                    fh.write(json.dumps({"source": str(path), "error": str(e)}) + "\n")
                if len(pending) >= engine.batch_size:
                    flush(fh)
                bar.update(1)
            flush(fh)
        finally:
            bar.close()
            fh.flush()
            os.replace(results_tmp, out / "results.jsonl")
    if not args.quiet:
        print(f"explained {done} image(s), skipped {failed}, with {engine!r} -> {out}", file=sys.stderr)
    return 1 if failed else 0


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs to a dict; values are read as JSON where they parse (``true``, ``3``), else strings."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise EngineError(f"option {pair!r} must look like KEY=VALUE (e.g. kernel=dirac).")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def cmd_create(args: argparse.Namespace) -> int:
    from .create import create_artifact, read_class_names

    art = create_artifact(
        args.method,
        args.backbone,
        args.out,
        weights=args.weights,
        source=args.source,
        options=parse_options(args.option),
        num_classes=args.num_classes,
        class_names=read_class_names(args.class_names) if args.class_names else None,
        backbone_kwargs=parse_options(args.backbone_option),
        zero_shot=args.zero_shot,
        templates=args.template or None,
        input_size=args.input_size,
    )
    print(f"created {art.path} ({art.name})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .create import resolve_ckpt
    from .export import export_artifact

    formats = (args.format,)
    with tempfile.TemporaryDirectory(prefix="xai-ckpt-") as tmp:
        art = export_artifact(resolve_ckpt(args.ckpt, tmp), args.out, formats)
    print(f"exported {art.path}: {', '.join(sorted(art.manifest['files']))}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .artifact import default_artifact_path, load_artifact
    from .backends import BACKENDS, backend_available

    art = load_artifact(args.artifact or default_artifact_path())
    keys = ("name", "backbone", "explainer", "preprocess", "precision", "files", "versions")
    summary = {k: art.manifest.get(k) for k in keys}
    summary["backends_installed"] = {name: backend_available(name) for name in BACKENDS}
    print(json.dumps(summary, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .backends.registry import BACKENDS, all_devices, all_precisions, export_formats

    parser = argparse.ArgumentParser(prog="xai-engine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("explain", help="explain images: writes <stem>.png (overlay), <stem>.npy, results.jsonl")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--artifact", default=None, help="artifact folder or built-in name (default: the embedded default)")
    p.add_argument("--backend", default="auto", choices=["auto", *BACKENDS])
    p.add_argument("--device", default="auto", choices=["auto", *all_devices()])
    p.add_argument(
        "--precision", default=None, choices=all_precisions(), help="default: the artifact's own (fp32 unless exported)"
    )
    p.add_argument("--target", default=None, help="class id or name to explain (default: the predicted class)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the heatmap")
    p.add_argument("--colormap", default="jet", choices=["jet", "turbo"])
    p.add_argument("--max-pixels", type=int, default=64_000_000, help="largest image to decode (0: no limit)")
    p.add_argument("--no-images", action="store_true", help="write results.jsonl only")
    p.add_argument("--allow-version-mismatch", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("create", help="create an artifact folder for a method on a backbone")
    p.add_argument("--method", required=True, help="vit-reciprocam, reciprocam, tame, ala, ...")
    p.add_argument("--backbone", required=True, help="LIBRARY/NAME, e.g. timm/vit_base_patch16_224")
    p.add_argument("--weights", default=None, help="local .safetensors state dict of the classifier")
    p.add_argument(
        "--source",
        default=None,
        choices=["pretrained", "package", "random"],
        help="weights when --weights is not given (default: package where known, else pretrained)",
    )
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--class-names", default=None, help="JSON list or text file, one name per line")
    p.add_argument("--option", action="append", default=[], help="explainer option KEY=VALUE (repeatable)")
    p.add_argument(
        "--backbone-option",
        action="append",
        default=[],
        help="backbone constructor option KEY=VALUE (repeatable), e.g. fused=true",
    )
    p.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="input side in pixels (default: the backbone's own); ALA runs ViTs there (e.g. 384)",
    )
    p.add_argument(
        "--zero-shot",
        action="store_true",
        help="open_clip: build the classifier from the class names with CLIP's text tower (zero-shot)",
    )
    p.add_argument(
        "--template",
        action="append",
        default=[],
        help="zero-shot prompt template, e.g. 'a photo of a {}.' (repeatable; default that one)",
    )
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("export", help="export an artifact (or METHOD:LIBRARY/NAME) to a backend's format")
    p.add_argument("ckpt", help="artifact folder, 'default', or METHOD:LIBRARY/NAME")
    p.add_argument(
        "--format",
        default="onnx",
        choices=list(export_formats()),
        help="what to write; a format converted from another (openvino from onnx) writes both",
    )
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("info", help="show an artifact's manifest and the installed backends")
    p.add_argument("artifact", nargs="?", default=None)
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EngineError as e:
        print(f"xai-engine {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
