"""The torch backend: runs the explain graph module itself (eager), on the CPU or a CUDA device.

Threads: the forward passes run on the backend's own worker threads (:class:`_Runner`), never on the callers'. Each
thread that runs torch ops keeps state of its own for as long as it lives (an OpenMP thread team, oneDNN scratch
memory, a malloc arena holding its largest activations: about 19 MB per calling thread with 2 intra-op threads,
more with more), so eight threads sharing one backend grew its memory by eight of those; on the workers it is paid
once per worker. On the CPU there are ``CPUs // threads`` workers, at least 2: a batch-1 pass leaves CPUs idle in
its serial parts, which a second pass fills (8 callers on 2 CPUs, default threads: 2 workers explain as fast as 8
callers running torch themselves, 1 worker half as fast); ``threads=1`` runs one pass per CPU. One worker on a
CUDA device.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ..errors import EngineError, InputError
from ..graph import graph_from_artifact
from .base import Backend, default_threads

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_local = threading.local()  # .runner: the token of the _Runner whose worker this thread is


def _mark_worker(token: object) -> None:
    _local.runner = token


class _Runner:
    """A few long-lived worker threads that run every forward pass of one backend; callers wait for the result.

    The pool starts with the first call and again in a forked child (whose copy of the workers does not run). The
    workers hold a token, not the runner: a backend dropped without ``close()`` takes its workers with it.
    """

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._token = object()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0

    def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        if getattr(_local, "runner", None) is self._token:  # already on a worker (a pass that calls the backend again)
            return fn(*args)
        return self._executor().submit(fn, *args).result()

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pool = ThreadPoolExecutor(
                    self.workers,
                    thread_name_prefix="xai-engine-torch",
                    initializer=_mark_worker,
                    initargs=(self._token,),
                )
                self._pid = os.getpid()
            return self._pool

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.shutdown(wait=True)


class TorchBackend(Backend):
    name = "torch"

    def _open_impl(self) -> None:
        if self.path is not None:
            raise InputError(
                f"the torch backend runs an artifact or a graph module, not a model file ({self.path}); open the "
                "file with backend='onnxruntime' or 'openvino'."
            )
        if self.artifact is not None:
            self.graph = graph_from_artifact(self.artifact, allow_version_mismatch=self.allow_version_mismatch)
        else:
            self.graph = self.module.eval()
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineError("device='cuda' was asked for but this torch has no CUDA device; use device='cpu'.")
        self.dtype = _DTYPES[self.precision]
        self.graph.to(self.device, self.dtype)
        if self.device == "cpu":
            torch.set_num_threads(self.threads)  # once, here: process-wide, read by every thread that runs torch
        workers = max(2, default_threads() // self.threads) if self.device == "cpu" else 1
        self._runner = _Runner(workers)

    def _forward(self, images: torch.Tensor, targets: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        x = images.to(self.device, self.dtype)
        with torch.inference_mode():
            if targets is None:
                return self.graph(x), None
            return self.graph(x, targets.to(self.device))

    def _forward_numpy(self, images: np.ndarray, targets: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        logits, saliency = self._forward(
            torch.from_numpy(images), None if targets is None else torch.from_numpy(targets)
        )
        return logits.float().cpu().numpy(), None if saliency is None else saliency.float().cpu().numpy()

    def _run_tensors_impl(self, images: torch.Tensor, targets: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        return self._runner(self._forward, images, targets)

    def _run_impl(self, images: np.ndarray, targets: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        return self._runner(self._forward_numpy, images, targets)

    def close(self) -> None:
        """Stop the worker threads (a later call starts them again)."""
        self._runner.close()
