"""``Engine``: load an artifact on a backend, explain images.

>>> from engine import Engine
>>> engine = Engine.load()                      # the embedded default (EfficientNet-Lite0 + ReciproCAM)
>>> exp = engine.explain("photo.jpg")           # class, score, top-k and a saliency map at the photo's size
>>> exp.overlay().save("photo_overlay.png")
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .artifact import Artifact, default_artifact_path, load_artifact
from .backends import Backend, check_backend_options, get_backend_class, select_backend
from .config import RESIZE_MODES
from .errors import EngineError, InputError
from .explanation import Explanation, FailedExplanation
from .numeric import softmax
from .preprocess import (
    DEFAULT_MAX_PIXELS,
    SOURCE_SIZE_KEY,
    Preprocessor,
    jpeg_draft_size,
    load_image,
    saliency_to_image,
)

EXPLAIN_RESIZE_MODE: str | None = None
"""How :class:`Engine` feeds a photo to the network unless told otherwise: None, the artifact's own transform (the
classifier's centre crop for the built-ins). The whole-photo modes cost top-1 accuracy on ImageNet photos (EfficientNet
-Lite0: 88.3 % crop, 79.0 % letterbox, 82.6 % squash on imagenet-sample; the README's "Whole photo or centre crop"),
so they are one option away, not the default; a crop's overlay draws the box the network saw."""


def _is_batch(images: Any) -> bool:
    return isinstance(images, (list, tuple))


class Engine:
    """One artifact opened on one backend.

    Thread-safe: threads may share one Engine and call :meth:`explain` / :meth:`explain_batch` at once; each gets the
    result a serial call gives. Decoding, preprocessing and postprocessing run in the calling thread (nothing in
    them is shared but read-only settings); the backend call is shared as each runtime allows:

    * ONNX Runtime: ``InferenceSession.run`` is thread-safe; concurrent calls share the session (and its intra-op
      thread pool) and run at once.
    * OpenVINO: a pool of infer requests, at most the compiled model's ``OPTIMAL_NUMBER_OF_INFER_REQUESTS`` (1 under
      the latency hint used here); a call takes a free one (or waits for one) and copies its outputs out before
      giving it back.
    * torch: the forward passes run on the backend's own worker threads (``CPUs // threads`` of them, at least 2;
      one on a CUDA device); callers wait for their result. Memory then does not grow with the number of calling
      threads (torch keeps per-thread state in every thread that runs it).

    A shared Engine runs at most the backend's parallelism; more throughput comes from more processes (or, for
    ONNX Runtime and torch, from a lower ``threads`` and more callers). Do not change an Engine's attributes while
    other threads use it, or call :meth:`close` while calls are in flight.
    """

    def __init__(
        self,
        artifact: Artifact,
        backend: Backend,
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        batch_size: int = 8,
        resize_mode: str | None = EXPLAIN_RESIZE_MODE,
    ):
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}.")
        if resize_mode not in (None, "artifact", *RESIZE_MODES):
            raise InputError(
                f"resize_mode must be one of {', '.join(RESIZE_MODES)} or 'artifact' (the artifact's own, "
                f"{artifact.preprocess.resize_mode!r}), got {resize_mode!r}."
            )
        self.artifact = artifact
        self.backend = backend
        pre = artifact.preprocess
        if resize_mode not in (None, "artifact"):
            pre = dataclasses.replace(pre, resize_mode=resize_mode)
        self.preprocessor = Preprocessor(pre)
        self._draft = jpeg_draft_size(pre.input_size)
        self.class_names = artifact.class_names
        self.max_pixels = max_pixels
        self.batch_size = batch_size

    @classmethod
    def load(
        cls,
        artifact: str | os.PathLike | Artifact | None = None,
        backend: str = "auto",
        *,
        device: str = "auto",
        precision: str | None = None,
        threads: int | None = None,
        allow_version_mismatch: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        batch_size: int = 8,
        resize_mode: str | None = EXPLAIN_RESIZE_MODE,
        backend_options: dict[str, Any] | None = None,
    ) -> Engine:
        """Open an artifact.

        Args:
            artifact: an artifact folder, a loaded :class:`Artifact`, or None for the embedded default (without
                torch, the edge install: its ONNX export, ``reciprocam-efficientnet_lite0-onnx``).
            backend: ``torch``, ``onnxruntime``, ``openvino`` or ``auto`` (the fastest the artifact and the
                installed packages allow: OpenVINO, then ONNX Runtime, then torch).
            device: ``auto``, ``cpu`` or ``cuda``.
            precision: ``fp32`` (parity with torch), ``bf16`` or ``fp16`` where the backend has it; None (the
                default): the artifact's own precision (``fp32`` unless it was exported for another).
            threads: intra-op threads (default: the CPUs this process may use).
            allow_version_mismatch: accept an artifact made with other library versions.
            max_pixels: largest image (width x height) to decode; None for no limit.
            batch_size: images per backend call in :meth:`explain` on a list.
            resize_mode: how a photo becomes the network input: None or ``"artifact"`` (the default: the artifact's
                own ``preprocess.resize_mode``, ``"crop"`` for the built-ins), ``"letterbox"`` (the whole photo,
                undistorted, padded with the mean colour; the map covers the whole photo), ``"squash"`` (the whole
                photo, stretched), ``"crop"`` (the classifier's centre crop; the map is 0 outside it, and the
                overlay draws the box).
            backend_options: the chosen backend's own options (``Backend.options``), e.g. for torch on CUDA
                ``{"cuda_graphs": True, "compile": True, "autocast": True}``, for ONNX Runtime on CUDA
                ``{"tensorrt_ep": True, "allow_cpu_fallback": False}``. An option the backend does not take is an
                error that lists the ones it does.
        """
        if artifact is None:
            artifact = default_artifact_path()
        art = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
        name = select_backend(art, backend, device)
        backend_cls = get_backend_class(name)
        check_backend_options(backend_cls, backend_options or {})
        runner = backend_cls(
            art,
            precision=precision or art.precision,
            device=device,
            threads=threads,
            allow_version_mismatch=allow_version_mismatch,
            **(backend_options or {}),
        )
        return cls(art, runner, max_pixels=max_pixels, batch_size=batch_size, resize_mode=resize_mode)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def explain(
        self,
        images: Any,
        target: int | str | Sequence[int | str | None] | None = None,
        *,
        top_k: int = 5,
        keep_image: bool = True,
        on_error: str = "raise",
    ) -> Explanation | FailedExplanation | list[Explanation | FailedExplanation]:
        """Classify and explain one image, or a list of images (batched).

        Args:
            images: a path, bytes, PIL image or HxWx3 uint8 array, or a list of these.
            target: the class to explain (default: the predicted one): a class id or a class name (matched without
                regard to case, e.g. ``"golden retriever"``); one for all images, or a list with one per image.
            top_k: how many classes to report in ``Explanation.topk``.
            keep_image: keep the decoded image on the Explanation (needed by ``overlay()``).
            on_error: ``"raise"`` (default) raises on the first image that cannot be read; ``"skip"`` puts a
                :class:`FailedExplanation` (its source and the error message) in that image's place and explains the
                others, as the CLI does.

        Returns:
            One :class:`Explanation` (or :class:`FailedExplanation`), or a list of them for a list input, in input
            order.
        """
        if _is_batch(images):
            return self.explain_batch(list(images), target, top_k=top_k, keep_image=keep_image, on_error=on_error)
        if target is not None and not isinstance(target, (int, np.integer, str)):
            raise InputError("for one image, target must be one class id or name (or None for the predicted class).")
        return self.explain_batch([images], [target], top_k=top_k, keep_image=keep_image, on_error=on_error)[0]

    def explain_batch(
        self,
        images: Sequence[Any],
        targets: int | str | Sequence[int | str | None] | None = None,
        *,
        top_k: int = 5,
        keep_image: bool = True,
        on_error: str = "raise",
    ) -> list[Explanation | FailedExplanation]:
        """Explain a list of images, ``batch_size`` at a time. See :meth:`explain` for the arguments."""
        if on_error not in ("raise", "skip"):
            raise InputError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
        if len(images) == 0:
            return []
        if targets is None or isinstance(targets, (int, np.integer, str)):
            targets = [targets] * len(images)
        elif len(targets) != len(images):
            raise InputError(f"{len(targets)} targets were given for {len(images)} images; give one per image.")
        ids = [self.resolve_target(t) for t in targets]  # every name checked before any work
        out: list[Explanation | FailedExplanation] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            decoded, failed, decode_ms = [], [], []
            for i, img in enumerate(chunk):
                t0 = time.perf_counter()
                try:
                    decoded.append((i, load_image(img, max_pixels=self.max_pixels, draft=self._draft)))
                except EngineError as e:
                    if on_error == "raise":
                        raise
                    failed.append((i, FailedExplanation(source=_source_name(img), error=str(e), kind=type(e).__name__)))
                    continue
                decode_ms.append((time.perf_counter() - t0) * 1e3)
            results: list[Any] = [None] * len(chunk)
            for i, failure in failed:
                results[i] = failure
            if decoded:
                done = self._explain_decoded(
                    [img for _, img in decoded],
                    [ids[start + i] for i, _ in decoded],
                    top_k,
                    keep_image,
                    sources=[_source_name(chunk[i]) for i, _ in decoded],
                    decode_ms=decode_ms,
                )
                for (i, _), exp in zip(decoded, done, strict=True):
                    results[i] = exp
            out.extend(results)
        return out

    def resolve_target(self, target: int | str | None) -> int:
        """A class id, a class name (case-insensitive) or None -> the class id the graph takes (-1: the predicted one).
        See :func:`resolve_target`; an id out of the model's range is refused here too, before any work."""
        cid = resolve_target(self.artifact, target)
        if not -1 <= cid < self.backend._class_bound():
            raise self.backend._range_error([cid])
        return cid

    def _explain_decoded(self, decoded, targets, top_k, keep_image, sources, decode_ms) -> list[Explanation]:
        batch_parts, metas, pre_ms = [], [], []
        for image in decoded:
            t0 = time.perf_counter()
            x, (meta,) = self.preprocessor([image])
            pre_ms.append((time.perf_counter() - t0) * 1e3)
            batch_parts.append(x)
            metas.append(meta)
        batch = np.concatenate(batch_parts) if len(batch_parts) > 1 else batch_parts[0]
        t0 = time.perf_counter()
        logits, lowres = self.backend.infer(batch, np.asarray(targets, dtype=np.int64))
        infer_ms = (time.perf_counter() - t0) * 1e3
        probs = softmax(logits)
        results = []
        for i, meta in enumerate(metas):
            t0 = time.perf_counter()
            order = np.argsort(-probs[i])[: max(1, top_k)]
            cid = int(order[0])
            target = int(targets[i]) if targets[i] >= 0 else cid
            sal = saliency_to_image(lowres[i], meta)
            results.append(
                Explanation(
                    saliency=sal,
                    class_id=cid,
                    class_name=self._name(cid),
                    score=float(probs[i, cid]),
                    target=target,
                    topk=[(int(c), self._name(int(c)), float(probs[i, c])) for c in order],
                    timings={},
                    method=self.artifact.method,
                    backend=self.backend.name,
                    saliency_lowres=lowres[i],
                    image=decoded[i] if keep_image else None,
                    source=sources[i],
                    crop_box=meta.crop_box,
                    precision=self.backend.effective_precision,
                    resize_mode=meta.resize_mode,
                    target_name=self._name(target),
                    target_score=float(probs[i, target]) if 0 <= target < probs.shape[1] else float("nan"),
                    source_size=decoded[i].info.get(SOURCE_SIZE_KEY, decoded[i].size),
                )
            )
            results[-1].timings = {
                "decode_ms": decode_ms[i],
                "preprocess_ms": pre_ms[i],
                "postprocess_ms": (time.perf_counter() - t0) * 1e3,
                "batch_infer_ms": infer_ms,
                "batch_size": len(metas),
            }
        return results

    def _name(self, cid: int) -> str:
        return self.class_names[cid] if 0 <= cid < len(self.class_names) else f"class_{cid}"

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Engine({self.artifact.name!r}, backend={self.backend.name!r}, "
            f"precision={self.backend.effective_precision!r})"
        )


def resolve_target(artifact: Artifact, target: int | str | None) -> int:
    """A class id, a class name of ``artifact`` (case-insensitive) or None -> the class id an explain graph takes
    (-1: the predicted class). Needs no backend: callers check a target before any work.

    Raises:
        InputError: the name matches no class (the message suggests close names), or the value is neither.
    """
    if target is None:
        return -1
    if isinstance(target, (bool, np.bool_)):
        raise InputError(f"target must be a class id or a class name, got {target!r}.")
    if isinstance(target, (int, np.integer)):
        return int(target)
    if not isinstance(target, str):
        raise InputError(f"target must be a class id, a class name or None, got a {type(target).__name__}.")
    text = target.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    names = artifact.class_names
    lowered: dict[str, int] = {}
    for i, name in enumerate(names):
        lowered.setdefault(name.lower(), i)
    if text.lower() in lowered:
        return lowered[text.lower()]
    close = difflib.get_close_matches(text.lower(), list(lowered), n=5, cutoff=0.6)
    hint = f" Close names: {', '.join(repr(names[lowered[c]]) for c in close)}." if close else ""
    ref = str(artifact.path) if artifact.path is not None else artifact.name
    raise InputError(
        f"target {target!r} is not a class name of artifact {artifact.name!r} ({len(names)} classes).{hint} "
        f"List them with: xai-engine info {ref} --classes"
    )


def _source_name(image: Any) -> str | None:
    if isinstance(image, (str, os.PathLike)):
        return str(Path(image))
    return None


def load(artifact: str | os.PathLike | Artifact | None = None, backend: str = "auto", **kwargs: Any) -> Engine:
    """Shorthand for :meth:`Engine.load`."""
    return Engine.load(artifact, backend, **kwargs)
