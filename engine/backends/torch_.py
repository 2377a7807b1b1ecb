"""The torch backend: runs the explain graph module itself (eager), on the CPU or a CUDA device.

Threads: the forward passes run on the backend's own worker threads (:class:`_Runner`), never on the callers'. Each
thread that runs torch ops keeps state of its own for as long as it lives (an OpenMP thread team, oneDNN scratch
memory, a malloc arena holding its largest activations: about 19 MB per calling thread with 2 intra-op threads,
more with more), so eight threads sharing one backend grew its memory by eight of those; on the workers it is paid
once per worker. On the CPU there are ``CPUs // threads`` workers, at least 2: a batch-1 pass leaves CPUs idle in
its serial parts, which a second pass fills (8 callers on 2 CPUs, default threads: 2 workers explain as fast as 8
callers running torch themselves, 1 worker half as fast); ``threads=1`` runs one pass per CPU. One worker on a
CUDA device.

On a CUDA device (``backend_options`` of :meth:`engine.Engine.load`):

* ``precision="fp16"`` / ``"bf16"`` run under ``torch.autocast`` (``autocast=True``, the default there): the
  weights stay float32 and torch keeps softmax, normalisations and reductions in float32, which the min-max scaled
  maps need. ``autocast=False`` casts the whole graph instead (what the CPU does).
* ``cuda_graphs=True`` captures one CUDA graph per batch size (and with/without targets) on first use, after a
  warm-up, and replays it: no per-kernel launch cost. A graph that cannot be captured (an op that syncs with the
  host) falls back to eager for that batch size, with one warning. Outputs are copied out of the graph's memory.
* ``compile=True`` (or a ``torch.compile`` mode name, e.g. ``"max-autotune-no-cudagraphs"``) compiles the graph
  first; each new batch size compiles once.
"""

from __future__ import annotations

import os
import threading
import warnings
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


class _CudaGraphs:
    """One captured CUDA graph per (batch size, with targets) key, replayed on copies of the inputs."""

    def __init__(self, fn: Callable[..., tuple[Any, ...]], warmup: int = 3) -> None:
        self.fn = fn
        self.warmup = warmup
        self.graphs: dict[tuple[int, bool], Any] = {}
        self.pool = None

    def __call__(self, images: torch.Tensor, targets: torch.Tensor | None) -> tuple[Any, ...]:
        key = (int(images.shape[0]), targets is not None)
        if key not in self.graphs:
            self.graphs[key] = self._capture(images, targets)
        entry = self.graphs[key]
        if entry is None:  # this batch size could not be captured: eager
            return self.fn(images, targets)
        static_images, static_targets, graph, outputs = entry
        static_images.copy_(images)
        if static_targets is not None:
            static_targets.copy_(targets)
        graph.replay()
        return tuple(None if o is None else o.clone() for o in outputs)

    def _capture(self, images: torch.Tensor, targets: torch.Tensor | None) -> Any:
        static_images = images.clone()
        static_targets = None if targets is None else targets.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream (cuDNN autotuning, lazy initialisation)
            for _ in range(self.warmup):
                self.fn(static_images, static_targets)
        torch.cuda.current_stream().wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()  # one memory pool for every batch size's graph
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                outputs = self.fn(static_images, static_targets)
        except Exception as e:  # noqa: BLE001 - any capture failure means: run this batch size eagerly
            warnings.warn(
                f"CUDA graph capture failed for batch {images.shape[0]} ({type(e).__name__}: {e}); this batch size "
                "runs eagerly.",
                RuntimeWarning,
                stacklevel=3,
            )
            torch.cuda.synchronize()
            return None
        return static_images, static_targets, graph, outputs


class TorchBackend(Backend):
    name = "torch"
    options = ("autocast", "cuda_graphs", "compile")

    def __init__(
        self,
        source: Any,
        *,
        autocast: bool = True,
        cuda_graphs: bool = False,
        compile: bool | str = False,  # noqa: A002 - torch.compile's own name for it
        **kwargs: Any,
    ) -> None:
        self.autocast = bool(autocast)
        self.cuda_graphs = bool(cuda_graphs)
        self.compile = compile
        super().__init__(source, **kwargs)

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
        on_cuda = self.device.startswith("cuda")
        if self.cuda_graphs and not on_cuda:
            raise InputError("cuda_graphs=True needs device='cuda'; CUDA graphs do not exist on the CPU.")
        # on CUDA, fp16/bf16 run under autocast with float32 weights; elsewhere (or autocast=False) the graph is cast
        self._autocast_dtype = (
            _DTYPES[self.precision] if on_cuda and self.autocast and self.precision != "fp32" else None
        )
        self.dtype = torch.float32 if self._autocast_dtype is not None else _DTYPES[self.precision]
        self.graph.to(self.device, self.dtype)
        self._module = self.graph
        if self.compile:
            mode = self.compile if isinstance(self.compile, str) else None
            self._module = torch.compile(self.graph, mode=mode, dynamic=False)
        if self.device == "cpu":
            torch.set_num_threads(self.threads)  # once, here: process-wide, read by every thread that runs torch
        workers = max(2, default_threads() // self.threads) if self.device == "cpu" else 1
        self._runner = _Runner(workers)
        self._graphs = _CudaGraphs(self._device_forward) if self.cuda_graphs else None

    def _device_forward(self, x: torch.Tensor, targets: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """The graph on inputs already on the device (the function a CUDA graph captures)."""
        with torch.inference_mode():
            if self._autocast_dtype is not None:
                with torch.autocast("cuda", dtype=self._autocast_dtype):
                    out = self._module(x) if targets is None else self._module(x, targets)
            else:
                out = self._module(x) if targets is None else self._module(x, targets)
        return (out, None) if targets is None else tuple(out)

    def _forward(self, images: torch.Tensor, targets: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        x = images.to(self.device, self.dtype)
        t = None if targets is None else targets.to(self.device)
        if self._graphs is not None:
            return self._graphs(x.contiguous(), t)
        return self._device_forward(x, t)

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
