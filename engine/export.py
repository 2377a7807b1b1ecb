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
from .errors import BackendUnavailableError, EngineError
from .graph import external_weights_path, graph_from_artifact

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


def export_artifact(artifact: Artifact, out_dir: str | os.PathLike, formats: tuple[str, ...] = ("onnx",)) -> Artifact:
    """Write a new artifact folder holding the source artifact's files plus the exported graph(s).

    The graph's trainable backbone deltas (LoRA) are merged into its weights first, so the exported graph holds no
    LoRA op.

    Args:
        artifact: the source (a loaded artifact folder or one made in memory by :func:`engine.create.create_artifact`).
        out_dir: the new artifact folder.
        formats: export format names from the backend registry (``onnx``, ``openvino``); a format converted from
            another one (OpenVINO IR from ONNX) brings that one along.
    """
    from .backends.registry import export_formats, format_chain

    known = export_formats()
    unknown = [f for f in formats if f not in known]
    if unknown:
        raise EngineError(f"unknown export format(s) {sorted(unknown)}; choose from {sorted(known)}.")
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
            else:
                build(files[known[spec.build_from].writes[0]], target)
            files.update({name: Path(tmp) / name for name in spec.writes})
        manifest = dict(artifact.manifest)
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
