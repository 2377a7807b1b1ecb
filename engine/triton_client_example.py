"""Explain images with an xai-engine model served by Triton Inference Server (a tritonclient example).

``python export/to_triton.py`` copies this file into the model folder as ``client_example.py``; it reads
``preprocess.json``, ``labels.txt`` and ``config.pbtxt`` from that folder and takes the model name from the folder's
name. It needs only the base install of xai-engine (numpy, Pillow: no torch, no runtime) and the Triton client::

    pip install "xai-engine[triton]"          # xai-engine + tritonclient[http]
    python REPO/<name>/client_example.py photo.jpg [more.jpg ...] [--url localhost:8000] [--target CLASS] [--out DIR]

Each image becomes exactly the input that :class:`engine.Engine` feeds its own backends (the same decoding with
:func:`engine.preprocess.load_image` and the same :class:`engine.preprocess.Preprocessor`); Triton runs the graph on
``image`` (float32, B x 3 x H x W) and ``target`` (int64, B x 1, -1 = the predicted class); the low-resolution
``saliency`` is mapped back onto each photo with :func:`engine.preprocess.saliency_to_image`. With ``--out`` the maps
are saved as ``<stem>.npy`` (float32, at the photo's size); one JSON line per image goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import PreprocessConfig
from engine.numeric import softmax
from engine.preprocess import (
    DEFAULT_MAX_PIXELS,
    ImageMeta,
    Preprocessor,
    jpeg_draft_size,
    load_image,
    saliency_to_image,
)

HERE = Path(__file__).resolve().parent


def load_model_info(model_dir: str | Path = HERE) -> dict[str, Any]:
    """The model folder's settings: ``name`` (the folder's), ``preprocess`` (a PreprocessConfig), ``class_names``
    (labels.txt) and ``max_batch_size`` (config.pbtxt; 8 when it cannot be read)."""
    model_dir = Path(model_dir)
    preprocess = PreprocessConfig.from_dict(json.loads((model_dir / "preprocess.json").read_text(encoding="utf-8")))
    labels = model_dir / "labels.txt"
    class_names = labels.read_text(encoding="utf-8").splitlines() if labels.is_file() else []
    config = model_dir / "config.pbtxt"
    found = (
        re.search(r"^\s*max_batch_size\s*:\s*(\d+)", config.read_text(encoding="utf-8"), re.M)
        if config.is_file()
        else None
    )
    return {
        "name": model_dir.name,
        "preprocess": preprocess,
        "class_names": class_names,
        "max_batch_size": max(1, int(found.group(1))) if found else 8,
    }


def make_batch(
    images: Sequence[Any], preprocess: PreprocessConfig, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, list[ImageMeta], list[Any]]:
    """Decode and preprocess images exactly as :meth:`engine.Engine.explain` does.

    Args:
        images: paths, encoded bytes, PIL images or HxWx3 uint8 arrays.
        preprocess: the model's preprocessing (``preprocess.json``).
        max_pixels: the decompression-bomb limit (``Engine.load(max_pixels=...)``; None: off).

    Returns:
        ``(batch, metas, decoded)``: float32 ``(B, 3, H, W)``, one ImageMeta per image, the decoded RGB images.
    """
    pre = Preprocessor(preprocess)
    draft = jpeg_draft_size(preprocess.input_size)  # JPEGs at least twice the input decode reduced, as in Engine
    decoded = [load_image(img, max_pixels=max_pixels, draft=draft) for img in images]
    parts, metas = [], []
    for image in decoded:
        x, (meta,) = pre([image])
        parts.append(x)
        metas.append(meta)
    return np.concatenate(parts), metas, decoded


def resolve_targets(
    targets: Sequence[int | str | None] | int | str | None, class_names: list[str], n: int
) -> np.ndarray:
    """Class ids (int64, shape ``(n,)``) from ids, names (case-insensitive, from labels.txt) or None (-1: predicted)."""
    if targets is None or isinstance(targets, (int, str)):
        targets = [targets] * n
    if len(targets) != n:
        raise ValueError(f"{len(targets)} targets for {n} images; give one per image.")
    lower = {c.lower(): i for i, c in enumerate(class_names)}
    ids = []
    for t in targets:
        if t is None:
            ids.append(-1)
        elif isinstance(t, str) and not t.strip().lstrip("-").isdigit():
            if t.strip().lower() not in lower:
                raise ValueError(f"no class is named {t!r} (labels.txt).")
            ids.append(lower[t.strip().lower()])
        else:
            ids.append(int(t))
    return np.asarray(ids, dtype=np.int64)


def build_request(client_module: Any, batch: np.ndarray, targets: np.ndarray) -> tuple[list[Any], list[Any]]:
    """Triton inputs and requested outputs (``tritonclient.http`` or ``tritonclient.grpc``).

    ``target`` goes as ``[B, 1]``: the config declares ``dims: [ 1 ]`` with ``reshape: { shape: [ ] }``, so the model
    receives the 1-D batch of class ids it was exported with.
    """
    image = client_module.InferInput("image", list(batch.shape), "FP32")
    image.set_data_from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
    target = client_module.InferInput("target", [len(targets), 1], "INT64")
    target.set_data_from_numpy(np.asarray(targets, dtype=np.int64).reshape(-1, 1))
    outputs = [client_module.InferRequestedOutput("logits"), client_module.InferRequestedOutput("saliency")]
    return [image, target], outputs


def client_module(protocol: str = "http") -> Any:
    """``tritonclient.http`` or ``tritonclient.grpc``, with the pip command when it is missing."""
    try:
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except (ImportError, RuntimeError) as e:
        raise SystemExit(f'this example needs the Triton client: pip install "tritonclient[{protocol}]" ({e})') from e
    return module


def infer(
    client: Any, module: Any, model: str, batch: np.ndarray, targets: np.ndarray, max_batch_size: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Run the model on Triton, ``max_batch_size`` images per request; ``(logits, saliency)`` as numpy arrays."""
    logits, saliency = [], []
    for start in range(0, len(batch), max_batch_size):
        inputs, outputs = build_request(
            module, batch[start : start + max_batch_size], targets[start : start + max_batch_size]
        )
        result = client.infer(model, inputs, outputs=outputs)
        logits.append(result.as_numpy("logits"))
        saliency.append(result.as_numpy("saliency"))
    return np.concatenate(logits), np.concatenate(saliency)


def explain(
    logits: np.ndarray,
    saliency: np.ndarray,
    metas: list[ImageMeta],
    targets: np.ndarray,
    class_names: list[str],
    top_k: int = 5,
) -> list[dict[str, Any]]:
    """Per image what :class:`engine.Explanation` holds: class, score (softmax), top-k, target and the map at the
    photo's size (``"saliency"``, float32, 0 outside the region the network saw)."""

    def name(c: int) -> str:
        return class_names[c] if 0 <= c < len(class_names) else f"class_{c}"

    probs = softmax(logits)
    results = []
    for i, meta in enumerate(metas):
        order = np.argsort(-probs[i])[: max(1, top_k)]
        cid = int(order[0])
        target = int(targets[i]) if targets[i] >= 0 else cid
        results.append(
            {
                "class_id": cid,
                "class_name": name(cid),
                "score": float(probs[i, cid]),
                "topk": [(int(c), name(int(c)), float(probs[i, c])) for c in order],
                "target": target,
                "target_name": name(target),
                "crop_box": [float(v) for v in meta.crop_box],
                "saliency": saliency_to_image(saliency[i], meta),
            }
        )
    return results


def main(argv: list[str] | None = None) -> int:
    info = load_model_info(HERE)
    p = argparse.ArgumentParser(description=f"Explain images with the Triton model {info['name']!r}.")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--url", default=None, help="Triton address (default localhost:8000 for http, :8001 for grpc)")
    p.add_argument("--protocol", choices=("http", "grpc"), default="http")
    p.add_argument("--model", default=info["name"], help="model name (default: this folder's name)")
    p.add_argument("--target", default=None, help="class id or name to explain (default: the predicted class)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--out", default=None, help="folder for the maps (<stem>.npy, float32, at the photo's size)")
    args = p.parse_args(argv)
    module = client_module(args.protocol)
    url = args.url or ("localhost:8001" if args.protocol == "grpc" else "localhost:8000")
    batch, metas, _ = make_batch(args.images, info["preprocess"])
    targets = resolve_targets(args.target, info["class_names"], len(args.images))
    client = module.InferenceServerClient(url=url)
    logits, saliency = infer(client, module, args.model, batch, targets, info["max_batch_size"])
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    for path, result in zip(
        args.images, explain(logits, saliency, metas, targets, info["class_names"], args.top_k), strict=True
    ):
        sal = result.pop("saliency")
        if out is not None:
            np.save(out / f"{Path(path).stem}.npy", sal)
        print(json.dumps({"source": str(path), **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
