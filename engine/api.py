"""``Engine``: load an artifact on a backend, explain images.

>>> from engine import Engine
>>> engine = Engine.load()                      # the embedded default (EfficientNet-Lite0 + ReciproCAM)
>>> exp = engine.explain("photo.jpg")           # class, score, top-k and a saliency map at the photo's size
>>> exp.overlay().save("photo_overlay.png")
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .artifact import Artifact, default_artifact_path, load_artifact
from .backends import Backend, get_backend_class, select_backend
from .errors import InputError
from .explanation import Explanation
from .numeric import softmax
from .preprocess import DEFAULT_MAX_PIXELS, Preprocessor, load_image, saliency_to_image


def _is_batch(images: Any) -> bool:
    return isinstance(images, (list, tuple))


class Engine:
    """One artifact opened on one backend. Thread-compatible, not thread-safe: use one Engine per thread."""

    def __init__(
        self, artifact: Artifact, backend: Backend, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, batch_size: int = 8
    ):
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}.")
        self.artifact = artifact
        self.backend = backend
        self.preprocessor = Preprocessor(artifact.preprocess)
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
    ) -> Engine:
        """Open an artifact.

        Args:
            artifact: an artifact folder, a loaded :class:`Artifact`, or None for the embedded default.
            backend: ``torch``, ``onnxruntime``, ``openvino`` or ``auto`` (the fastest the artifact and the
                installed packages allow: OpenVINO, then ONNX Runtime, then torch).
            device: ``auto``, ``cpu`` or ``cuda``.
            precision: ``fp32`` (parity with torch), ``bf16`` or ``fp16`` where the backend has it; None (the
                default): the artifact's own precision (``fp32`` unless it was exported for another).
            threads: intra-op threads (default: the CPUs this process may use).
            allow_version_mismatch: accept an artifact made with other library versions.
            max_pixels: largest image (width x height) to decode; None for no limit.
            batch_size: images per backend call in :meth:`explain` on a list.
        """
        if artifact is None:
            artifact = default_artifact_path()
        art = artifact if isinstance(artifact, Artifact) else load_artifact(artifact)
        name = select_backend(art, backend)
        runner = get_backend_class(name)(
            art,
            precision=precision or art.precision,
            device=device,
            threads=threads,
            allow_version_mismatch=allow_version_mismatch,
        )
        return cls(art, runner, max_pixels=max_pixels, batch_size=batch_size)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def explain(
        self, images: Any, target: int | Sequence[int] | None = None, *, top_k: int = 5, keep_image: bool = True
    ) -> Explanation | list[Explanation]:
        """Classify and explain one image, or a list of images (batched).

        Args:
            images: a path, bytes, PIL image or HxWx3 uint8 array, or a list of these.
            target: the class to explain (default: the predicted one); one int for all images or one per image.
            top_k: how many classes to report in ``Explanation.topk``.
            keep_image: keep the decoded image on the Explanation (needed by ``overlay()``).

        Returns:
            One :class:`Explanation`, or a list for a list input.
        """
        if _is_batch(images):
            return self.explain_batch(list(images), target, top_k=top_k, keep_image=keep_image)
        if target is not None and not isinstance(target, (int, np.integer)):
            raise InputError("for one image, target must be one int (or None for the predicted class).")
        return self.explain_batch(
            [images], None if target is None else [int(target)], top_k=top_k, keep_image=keep_image
        )[0]

    def explain_batch(
        self,
        images: Sequence[Any],
        targets: int | Sequence[int] | None = None,
        *,
        top_k: int = 5,
        keep_image: bool = True,
    ) -> list[Explanation]:
        """Explain a list of images, ``batch_size`` at a time. Raises on the first image that cannot be read."""
        if len(images) == 0:
            return []
        if targets is None:
            targets = [-1] * len(images)
        elif isinstance(targets, (int, np.integer)):
            targets = [int(targets)] * len(images)
        elif len(targets) != len(images):
            raise InputError(f"{len(targets)} targets were given for {len(images)} images; give one per image.")
        out: list[Explanation] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            t0 = time.perf_counter()
            decoded = [load_image(img, max_pixels=self.max_pixels) for img in chunk]
            t1 = time.perf_counter()
            out.extend(
                self._explain_decoded(
                    decoded,
                    targets[start : start + len(chunk)],
                    top_k,
                    keep_image,
                    sources=[_source_name(i) for i in chunk],
                    decode_ms=(t1 - t0) * 1e3,
                )
            )
        return out

    def _explain_decoded(self, decoded, targets, top_k, keep_image, sources, decode_ms) -> list[Explanation]:
        t1 = time.perf_counter()
        batch, metas = self.preprocessor(decoded)
        t2 = time.perf_counter()
        logits, lowres = self.backend.infer(batch, np.asarray(targets, dtype=np.int64))
        t3 = time.perf_counter()
        probs = softmax(logits)
        results = []
        for i, meta in enumerate(metas):
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
                )
            )
        t4 = time.perf_counter()
        n = len(results)
        for r in results:
            r.timings = {
                "decode_ms": decode_ms / n,
                "preprocess_ms": (t2 - t1) * 1e3 / n,
                "infer_ms": (t3 - t2) * 1e3 / n,
                "postprocess_ms": (t4 - t3) * 1e3 / n,
                "batch_size": n,
            }
            r.timings["total_ms"] = sum(v for k, v in r.timings.items() if k.endswith("_ms"))
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


def _source_name(image: Any) -> str | None:
    if isinstance(image, (str, os.PathLike)):
        return str(Path(image))
    return None


def load(artifact: str | os.PathLike | Artifact | None = None, backend: str = "auto", **kwargs: Any) -> Engine:
    """Shorthand for :meth:`Engine.load`."""
    return Engine.load(artifact, backend, **kwargs)
