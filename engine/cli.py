"""``xai-engine``: explain images, create artifacts, export them. Thin: parses arguments, calls the library."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import EngineError, InputError
from .preprocess.decode import IMAGE_SUFFIXES as IMAGE_SUFFIXES
from .preprocess.decode import split_image_files


def expand_images(paths: list[str], recursive: bool = False) -> tuple[list[Path], int]:
    """Files as given; folders expanded to their image files (``IMAGE_SUFFIXES``, not hidden; sorted), recursively
    with ``recursive``.

    Returns:
        ``(images, ignored)``: the image paths, and how many other files the folders held (not images by suffix, or
        hidden).

    Raises:
        EngineError: a path that does not exist and names no image file (a missing folder).
    """
    out: list[Path] = []
    ignored = 0
    for p in map(Path, paths):
        if p.is_dir():
            images, others = split_image_files(p, recursive=recursive)
            ignored += len(others)
            out.extend(images)
        elif not p.exists() and (not p.suffix or str(p).endswith(("/", os.sep))):
            raise EngineError(f"Folder not found: {p}. Check the path (relative paths start at {Path.cwd()}).")
        else:
            out.append(p)  # a file, or a missing image file: reported per image, the others still run
    return out, ignored


def _unique_stems(paths: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        stem = p.stem or "image"
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        stems.append(stem if n == 0 else f"{stem}_{n}")
    return stems


def _check_out_dir(out: Path, flag: str = "--out") -> None:
    if out.exists() and not out.is_dir():
        raise EngineError(f"{flag} {out} is an existing file, not a folder. Give a folder path (it is created).")


def cmd_explain(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .api import Engine

    out = Path(args.out)
    _check_out_dir(out)
    images, ignored = expand_images(args.images, recursive=args.recursive)
    if not images:
        where = "or in their subfolders " if args.recursive else ""
        more = "" if args.recursive else " Add --recursive to look into subfolders."
        raise EngineError(f"no images found in {args.images} {where}(files with {sorted(IMAGE_SUFFIXES)}).{more}")
    engine = Engine.load(
        args.artifact,
        args.backend,
        device=args.device,
        precision=args.precision,
        threads=args.threads,
        allow_version_mismatch=args.allow_version_mismatch,
        max_pixels=args.max_pixels if args.max_pixels > 0 else None,
        batch_size=args.batch_size,
        resize_mode=args.resize_mode,
    )
    target = engine.resolve_target(args.target)  # a name is checked before any work
    if ignored and not args.quiet:
        print(
            f"ignoring {ignored} file(s) in the folders that are not images ({', '.join(sorted(IMAGE_SUFFIXES))})",
            file=sys.stderr,
        )
    out.mkdir(parents=True, exist_ok=True)
    stems = _unique_stems(images)
    results_tmp = out / ".results.jsonl.tmp"
    done = failed = 0
    custom_look = args.colormap != "jet" or args.alpha != 0.5
    with open(results_tmp, "w", encoding="utf-8") as fh:
        bar = tqdm(total=len(images), unit="img", disable=len(images) < 2 or args.quiet, file=sys.stderr)
        try:
            for start in range(0, len(images), engine.batch_size):
                paths = images[start : start + engine.batch_size]
                results = engine.explain_batch(
                    paths, target, top_k=args.top_k, keep_image=not args.no_images, on_error="skip"
                )
                for path, stem, res in zip(paths, stems[start:], results, strict=False):
                    if not res.ok:
                        failed += 1
                        bar.write(f"skipped {path}: {res.error}", file=sys.stderr)
                        fh.write(json.dumps(res.to_dict()) + "\n")
                        continue
                    res.source = str(path)
                    files = res.save(out, stem) if not args.no_images else {}
                    if custom_look and not args.no_images:
                        res.overlay(alpha=args.alpha, colormap=args.colormap).save(out / f"{stem}.png")
                    record = res.to_dict() | {"files": {k: Path(v).name for k, v in files.items()}}
                    fh.write(json.dumps(record) + "\n")
                    done += 1
                bar.update(len(paths))
        finally:
            bar.close()
            fh.flush()
            os.replace(results_tmp, out / "results.jsonl")
    if not args.quiet:
        extra = f", ignored {ignored} non-image file(s)" if ignored else ""
        print(f"explained {done} image(s), skipped {failed}{extra}, with {engine!r} -> {out}", file=sys.stderr)
    return 1 if failed else 0


def cmd_explain_dataset(args: argparse.Namespace) -> int:
    from .dataset import explain_dataset

    summary = explain_dataset(
        args.src,
        args.out,
        artifact=args.artifact,
        backend=args.backend,
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
        part_size=args.part_size,
        ray=args.ray,
        actors=args.actors,
        gpus_per_actor=args.gpus_per_actor,
        cpus_per_actor=args.cpus_per_actor,
        overlays=args.overlays,
        resize_mode=args.resize_mode,
        target=args.target,
        top_k=args.top_k,
        max_pixels=args.max_pixels if args.max_pixels > 0 else None,
        limit=args.limit,
        progress=not args.quiet,
    )
    if args.json:
        print(json.dumps(summary))
    if not args.quiet:
        print(
            f"explained {summary['explained']} image(s), {summary['errors']} error row(s), skipped "
            f"{summary['already_done']} already in {summary['out']}; {summary['images_per_s']} images/s over "
            f"{summary['seconds']} s ({summary['mode']})",
            file=sys.stderr,
        )
        if summary["errors_total"]:
            print(
                f"{summary['errors_total']} image(s) in {summary['out']} have an error row (read them with "
                "engine.dataset.read_results; the 'error' column says why)",
                file=sys.stderr,
            )
    return 1 if summary["errors_total"] else 0  # the output as a whole, so a rerun after a failure still says so


def cmd_serve(args: argparse.Namespace) -> int:
    import signal

    from . import serve

    def _terminate(signum, frame):
        raise KeyboardInterrupt

    # Ctrl-C must stop a server even where it was started with SIGINT ignored (a background job of a script), and
    # SIGTERM (what a service manager sends) stops it the same way
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    serving = False
    try:  # Ctrl-C (or SIGTERM) at any point, even while the replicas start, stops Serve and the local Ray
        url = serve.start(
            args.artifact,
            host=args.host,
            port=args.port,
            ray_address=None if args.ray == "local" else args.ray,
            replicas=args.replicas,
            max_batch=args.max_batch,
            batch_wait_ms=args.batch_wait_ms,
            cpus_per_replica=args.cpus_per_replica,
            gpus_per_replica=args.gpus_per_replica,
            backend=args.backend,
            device=args.device,
            precision=args.precision,
            threads=args.threads,
            max_bytes=args.max_bytes,
            max_pixels=args.max_pixels if args.max_pixels > 0 else None,
            resize_mode=args.resize_mode,
        )
        serving = True
        signal.signal(signal.SIGTERM, _terminate)  # ray.init installed its own (sys.exit) meanwhile
        print(
            f"serving on {url} with {args.replicas} replica(s), batches of up to {args.max_batch} "
            f"(waiting up to {args.batch_wait_ms} ms); try:\n"
            f"  curl --data-binary @examples/golden_retriever.jpg '{url}/explain?saliency=png'\n"
            f"ready: {url}/readyz   health: {url}/healthz   Ctrl-C stops.",
            file=sys.stderr,
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping" if serving else "interrupted while starting; stopping", file=sys.stderr, flush=True)
    finally:
        serve.stop()
    return 0 if serving else 130


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
    from .requires import require_torch

    _check_out_dir(Path(args.out))
    require_torch("xai-engine create")
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
    from .requires import require_torch

    _check_out_dir(Path(args.out))
    require_torch("xai-engine export")
    from .create import resolve_ckpt
    from .export import export_artifact

    formats = (args.format,)
    if args.calib is not None and args.precision != "int8":
        raise InputError(f"--calib picks the photos int8 calibrates on; with --precision {args.precision} drop it.")
    with tempfile.TemporaryDirectory(prefix="xai-ckpt-") as tmp:
        art = export_artifact(
            resolve_ckpt(args.ckpt, tmp),
            args.out,
            formats,
            precision=args.precision,
            calib=args.calib,
            calib_count=args.calib_count,
            seed=args.calib_seed,
        )
    print(f"exported {art.path} ({art.precision}): {', '.join(sorted(art.manifest['files']))}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .artifact import default_artifact_path, load_artifact, resolve_artifact_path
    from .backends import BACKENDS, backend_available

    art = load_artifact(resolve_artifact_path(args.artifact) if args.artifact else default_artifact_path())
    if args.classes:
        for i, name in enumerate(art.class_names):
            print(f"{i}\t{name}")
        return 0
    keys = ("name", "backbone", "explainer", "preprocess", "precision", "files", "versions")
    summary = {k: art.manifest.get(k) for k in keys}
    summary["num_classes"] = len(art.class_names)
    summary["backends_installed"] = {name: backend_available(name) for name in BACKENDS}
    print(json.dumps(summary, indent=2))
    return 0


def inventory() -> dict[str, Any]:
    """What ``xai-engine list`` shows: built-in artifacts, methods, backbone libraries, backends; what is installed."""
    import importlib.metadata
    import importlib.util

    from .artifact import BUILTIN_DIR, MANIFEST, builtin_names, default_artifact_path
    from .backends import BACKENDS, backend_available
    from .config import WEIGHT_PACKAGES

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    default = default_artifact_path().name
    builtins = []
    for name in builtin_names():
        m = json.loads((BUILTIN_DIR / name / MANIFEST).read_text(encoding="utf-8"))
        files = sorted(m.get("files", {}))
        builtins.append(
            {
                "name": name,
                "default": name == default,
                "method": m["explainer"]["method"],
                "backbone": f"{m['backbone']['library']}/{m['backbone']['name']}",
                "files": files,
            }
        )
    has_torch = importlib.util.find_spec("torch") is not None
    if has_torch:
        from .explainers import list_explainers

        methods: list[str] | str = list_explainers()
    else:
        methods = 'not listed: creating artifacts needs torch (pip install "xai-engine[torch]" torch==2.13.0)'
    libraries = {"timm": "timm", "torchvision": "torchvision", "open_clip": "open_clip_torch"}
    backbones = {lib: {"installed": version(dist)} for lib, dist in libraries.items()}
    packages = {name: version(module.replace("_", "-")) for name, (module, _) in WEIGHT_PACKAGES.items()}
    backends = {
        name: {"installed": backend_available(name), "package": spec.package, "install": spec.extra}
        for name, spec in BACKENDS.items()
    }
    return {
        "builtin_artifacts": builtins,
        "methods": methods,
        "backbone_libraries": backbones,
        "weight_packages": packages,
        "backends": backends,
        "torch": version("torch"),
    }


def cmd_list(args: argparse.Namespace) -> int:
    data = inventory()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print("built-in artifacts (--artifact NAME):")
    for b in data["builtin_artifacts"]:
        mark = " (default)" if b["default"] else ""
        print(f"  {b['name']}{mark}: {b['method']} on {b['backbone']}; files {', '.join(b['files']) or '-'}")
    methods = data["methods"]
    print("methods (create --method):", ", ".join(methods) if isinstance(methods, list) else methods)
    print("backbone libraries (create --backbone LIBRARY/NAME):")
    for lib, info in data["backbone_libraries"].items():
        print(f"  {lib}: {info['installed'] or 'not installed'}")
    print("weight packages (create --source package):")
    for name, ver in data["weight_packages"].items():
        print(f"  timm/{name}: {ver or 'not installed'}")
    print("backends (--backend):")
    for name, info in data["backends"].items():
        state = "installed" if info["installed"] else f"not installed: pip install {info['install']}"
        print(f"  {name}: {state}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .backends.registry import BACKENDS, all_devices, all_precisions, export_formats
    from .precision import GRAPH_PRECISIONS
    from .serve import DEFAULT_MAX_BYTES

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
    p.add_argument(
        "--target",
        default=None,
        help="class id or name to explain, any case (default: the predicted class; list names: info --classes)",
    )
    p.add_argument(
        "--resize-mode",
        default="artifact",
        choices=["artifact", "letterbox", "squash", "crop"],
        help="artifact (default): the artifact's own transform (the centre crop for the built-ins; the overlay draws "
        "the box); letterbox: the whole photo, padded; squash: the whole photo, stretched; crop: the centre crop",
    )
    p.add_argument("--recursive", action="store_true", help="look for images in the folders' subfolders too")
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
    p.add_argument(
        "--precision",
        default="fp32",
        choices=list(GRAPH_PRECISIONS),
        help="the precision written into model.onnx (--format onnx): fp16 (casts; LayerNorm, Softmax and the map's "
        "normalisation stay fp32) or int8 (Q/DQ, calibrated on --calib photos); default fp32",
    )
    p.add_argument(
        "--calib",
        default=None,
        metavar="DIR",
        help="int8: folder of photos to calibrate on (searched recursively; default ../shared/data/imagenet-sample)",
    )
    p.add_argument("--calib-count", type=int, default=64, help="int8: photos to calibrate on, a seeded subset (0: all)")
    p.add_argument("--calib-seed", type=int, default=0, help="int8: seed that picks the calibration subset")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("info", help="show an artifact's manifest and the installed backends")
    p.add_argument("artifact", nargs="?", default=None, help="artifact folder or built-in name (default: the default)")
    p.add_argument("--classes", action="store_true", help="list the artifact's class ids and names instead")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("list", help="built-in artifacts, methods, backbone libraries, backends; what is installed")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "explain-dataset",
        help="explain a dataset into Parquet (one row per image; resumable), in-process or on Ray Data (--ray)",
    )
    p.add_argument("src", help="a folder (recursive), a .txt/.csv/.parquet list of paths or URIs")
    p.add_argument("--out", required=True, help="output folder of Parquet part files (a rerun skips rows there)")
    p.add_argument("--ray", default=None, metavar="ADDRESS|local", help="run on Ray Data (default: in-process)")
    p.add_argument("--actors", type=int, default=1, help="Ray actors, one Engine each")
    p.add_argument("--gpus-per-actor", type=float, default=0)
    p.add_argument("--cpus-per-actor", type=float, default=1)
    p.add_argument("--artifact", default=None, help="artifact folder or built-in name (default: the embedded default)")
    p.add_argument("--backend", default="auto", choices=["auto", *BACKENDS])
    p.add_argument("--device", default="auto", choices=["auto", *all_devices()])
    p.add_argument("--precision", default=None, choices=all_precisions())
    p.add_argument("--target", default=None, help="class id or name to explain (default: the predicted class)")
    p.add_argument("--resize-mode", default="artifact", choices=["artifact", "letterbox", "squash", "crop"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--part-size", type=int, default=512, help="rows per Parquet part file")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--overlays", default=None, metavar="DIR", help="also write PNG overlays to this folder")
    p.add_argument("--max-pixels", type=int, default=64_000_000, help="largest image to decode (0: no limit)")
    p.add_argument("--limit", type=int, default=None, help="explain at most N new images in this run")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_explain_dataset)

    p = sub.add_parser(
        "serve",
        help="serve explanations over HTTP with Ray Serve: POST /explain (an image) -> JSON class, scores, saliency",
    )
    p.add_argument("artifact", nargs="?", default=None, help="artifact folder or built-in name (default: embedded)")
    p.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas, one Engine each")
    p.add_argument("--max-batch", type=int, default=8, help="most requests per backend call (dynamic batching)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="longest wait for a batch to fill")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--ray", default="local", metavar="ADDRESS|local", help="Ray cluster to run on (default: local)")
    p.add_argument("--cpus-per-replica", type=float, default=1)
    p.add_argument("--gpus-per-replica", type=float, default=0)
    p.add_argument("--backend", default="auto", choices=["auto", *BACKENDS])
    p.add_argument("--device", default="auto", choices=["auto", *all_devices()])
    p.add_argument("--precision", default=None, choices=all_precisions())
    p.add_argument("--threads", type=int, default=None, help="intra-op threads per replica")
    p.add_argument("--resize-mode", default="artifact", choices=["artifact", "letterbox", "squash", "crop"])
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="largest request body (else 413)")
    p.add_argument("--max-pixels", type=int, default=64_000_000, help="largest image to decode (0: no limit)")
    p.set_defaults(func=cmd_serve)
    return parser


@contextlib.contextmanager
def _random_weights_notice(command: str) -> Iterator[None]:
    """Show a :class:`~engine.errors.RandomWeightsWarning` as one plain stderr line per command; other warnings are
    shown as usual."""
    from .errors import RandomWeightsWarning

    with warnings.catch_warnings():
        show, shown = warnings.showwarning, []

        def notice(message, category, filename, lineno, file=None, line=None):
            if not issubclass(category, RandomWeightsWarning):
                return show(message, category, filename, lineno, file, line)
            if not shown:  # once, though export (say) loads the source and the new artifact
                shown.append(message)
                print(f"xai-engine {command}: warning: {message}", file=sys.stderr)

        warnings.showwarning = notice
        yield


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _random_weights_notice(args.command):
            return args.func(args)
    except EngineError as e:
        print(f"xai-engine {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `xai-engine info --classes | head`: the reader stopped, nothing is wrong
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
