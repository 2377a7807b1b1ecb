"""Export: the explain graph is traced ONCE to ONNX; OpenVINO IR (and any later format) is converted from that ONNX.

Conversions are named ``<target>_from_<source>``. Which formats exist, what files each writes and which function
builds them is the backend registry's business (:data:`engine.backends.registry.BACKENDS`); this module holds the
conversion functions and :func:`export_artifact`, which runs them. Export imports no backend.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from pathlib import Path

from .requires import require_torch

require_torch("exporting an artifact (engine.export, xai-engine export)")  # before `import torch` below

import torch
from torch import nn

from .artifact import INPUT_NAMES, OUTPUT_NAMES, Artifact, path_from, write_artifact
from .errors import BackendUnavailableError, EngineError, InputError
from .graph import external_weights_path, graph_from_artifact
from .precision import DEFAULT_CALIB_COUNT

OPSET = 17


@contextlib.contextmanager
def _export_mode():
    """Disable the fused MHA fast path (the TorchScript exporter cannot lower it) and quieten tracer chatter."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*TorchScript-based ONNX.*")
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def onnx_from_module(
    module: nn.Module,
    path: str | os.PathLike,
    input_size: tuple[int, int],
    *,
    with_target: bool = True,
    batch: int = 2,
) -> Path:
    """Trace an explain graph (or a plain classifier) to ONNX with a dynamic batch dimension.

    Explain graphs get inputs ``image`` (B,3,H,W) float32 and ``target`` (B,) int64 (-1 = predicted class) and
    outputs ``logits`` and ``saliency``; a classifier (``with_target=False``) gets ``image`` -> ``logits``.
    """
    path = Path(path)
    module = module.eval()
    probe = next(module.parameters())
    x = torch.zeros(batch, 3, *input_size, dtype=probe.dtype)
    if with_target:
        args = (x, torch.full((batch,), -1, dtype=torch.long))
        names_in, names_out = list(INPUT_NAMES), list(OUTPUT_NAMES)
    else:
        args = (x,)
        names_in, names_out = ["image"], ["logits"]
    dynamic = {n: {0: "batch"} for n in names_in + names_out}
    with _export_mode():
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=names_in,
            output_names=names_out,
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
        )
    return path


def ir_from_onnx(onnx_path: str | os.PathLike, xml_path: str | os.PathLike) -> Path:
    """Convert an ONNX file to OpenVINO IR (``.xml`` + ``.bin``), keeping fp32 weights (no fp16 compression)."""
    try:
        import openvino as ov
    except ImportError as e:
        raise BackendUnavailableError(
            "OpenVINO export needs the openvino package: pip install 'xai-engine[openvino]'"
        ) from e
    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    return Path(xml_path)


def export_artifact(
    artifact: Artifact,
    out_dir: str | os.PathLike,
    formats: tuple[str, ...] = ("onnx",),
    *,
    precision: str = "fp32",
    calib: str | os.PathLike | list[str | os.PathLike] | None = None,
    calib_count: int = DEFAULT_CALIB_COUNT,
    seed: int = 0,
) -> Artifact:
    """Write a new artifact folder holding the source artifact's files plus the exported graph(s).

    The graph's trainable backbone deltas (LoRA) are merged into its weights first, so the exported graph holds no
    LoRA op.

    Args:
        artifact: the source (a loaded artifact folder or one made in memory by :func:`engine.create.create_artifact`).
        out_dir: the new artifact folder.
        formats: export format names from the backend registry (``onnx``, ``openvino``); a format converted from
            another one (OpenVINO IR from ONNX) brings that one along.
        precision: the precision written into ``model.onnx`` (:data:`engine.precision.GRAPH_PRECISIONS`): ``fp32``
            (the default), ``fp16`` or ``int8`` (Q/DQ, calibrated on photos); the manifest's ``precision`` says it.
            Only with the ``onnx`` format.
        calib: int8: a folder of photos to calibrate on (default: the shared sample photos beside the repository).
        calib_count: int8: how many of them (a seeded subset).
        seed: int8: picks the subset.
    """
    from .backends.registry import export_formats, format_chain
    from .precision import GRAPH_PRECISIONS

    known = export_formats()
    unknown = [f for f in formats if f not in known]
    if unknown:
        raise EngineError(f"unknown export format(s) {sorted(unknown)}; choose from {sorted(known)}.")
    if precision not in GRAPH_PRECISIONS:
        raise InputError(
            f"unknown export precision {precision!r}; choose one of {', '.join(GRAPH_PRECISIONS)} (--precision)."
        )
    if precision != "fp32" and set(formats) != {"onnx"}:
        raise InputError(
            f"--precision {precision} writes the precision into model.onnx: export it with --format onnx. OpenVINO "
            "picks its own precision when it compiles (Engine.load(precision=...) with the fp32 IR)."
        )
    if precision == "int8":  # a missing or empty photo folder fails before the graph is traced
        from .precision import calibration_images

        calibration_images(calib, calib_count, seed)
    graph = graph_from_artifact(artifact)
    graph.backbone.merge_deltas()
    input_size = tuple(artifact.preprocess.input_size)
    chain = list(dict.fromkeys(spec for fmt in formats for spec in format_chain(fmt)))
    regenerated = {name for spec in known.values() for name in spec.writes}
    with tempfile.TemporaryDirectory(prefix="xai-export-") as tmp:
        # every file but the exported graphs (made anew): weights, a trained head, heldout.json, ...
        files = {n: artifact.file(n) for n in artifact.manifest.get("files", {}) if n not in regenerated}
        files.update({k: v for k, v in artifact.extra_files.items() if k not in regenerated})
        for spec in chain:
            build = spec.build_function()
            target = Path(tmp) / spec.writes[0]
            if spec.build_from is None:
                build(graph, target, input_size)
                if spec.export_format == "onnx" and precision != "fp32":
                    _convert_precision(graph, artifact, target, precision, calib, calib_count, seed)
            else:
                build(files[known[spec.build_from].writes[0]], target)
            files.update({name: Path(tmp) / name for name in spec.writes})
        manifest = dict(artifact.manifest)
        manifest["precision"] = precision  # the graph written now, whatever the source artifact said
        if precision != "fp32":
            manifest["precision_details"] = _precision_details(precision, calib, calib_count, seed)
        else:
            manifest.pop("precision_details", None)
        if artifact.backbone.weights == "external":  # keep pointing at the same backbone file from the new folder
            rel = path_from(out_dir, external_weights_path(artifact))
            manifest["backbone"] = {**manifest["backbone"], "weights_file": rel}
        with torch.no_grad():  # the output shapes, read off the graph itself (whatever the method)
            logits, saliency = graph(torch.zeros(1, 3, *input_size, dtype=next(graph.parameters()).dtype))
        classes = int(logits.shape[1])
        h, w = (int(v) for v in saliency.shape[1:])
        manifest["io"] = {
            "inputs": {"image": ["batch", 3, *input_size], "target": ["batch"]},
            "outputs": {"logits": ["batch", classes], "saliency": ["batch", h, w]},
            "target_default": -1,
            "onnx_opset": OPSET,
        }
        return write_artifact(manifest, out_dir, files)


def _convert_precision(graph: nn.Module, artifact: Artifact, path: Path, precision: str, calib, count, seed) -> None:
    """Rewrite the fp32 ``model.onnx`` at ``path`` in ``precision`` (int8: the explainer's mask buffers mark the
    masked-copy path, which stays float32)."""
    from .precision import convert_onnx

    masks = [b.detach().float().cpu().numpy() for b in graph.explainer.buffers()] if hasattr(graph, "explainer") else []
    convert_onnx(
        path,
        path,
        precision,
        preprocess=artifact.preprocess,
        calib=calib,
        calib_count=count,
        seed=seed,
        keep_fp32_from=masks,
    )


def _precision_details(precision: str, calib, count: int, seed: int) -> dict:
    """What the manifest records about a converted graph: the tool (and version), and for int8 the calibration."""
    from .artifact import installed_version
    from .precision import DEFAULT_CALIB_DIR, INT8_METHOD, calibration_images

    if precision == "fp16":
        return {"tool": f"onnxconverter-common {installed_version('onnxconverter-common')}", "io_types": "fp32"}
    photos = calibration_images(calib, count, seed)
    folder = Path(calib) if isinstance(calib, str | os.PathLike) else (DEFAULT_CALIB_DIR if calib is None else None)
    return {
        "tool": f"onnxruntime.quantization {installed_version('onnxruntime')} (static, QDQ, symmetric int8)",
        "calibration": {
            "folder": folder.name if folder is not None else None,
            "photos": len(photos),
            "seed": seed,
            "method": INT8_METHOD,
        },
    }
