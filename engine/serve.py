"""Online explanations over HTTP with Ray Serve (``xai-engine serve ARTIFACT``).

>>> from engine import serve
>>> url = serve.start("engine/builtin/reciprocam-efficientnet_lite0-onnx", port=8000, max_batch=8)  # Ray local
>>> # POST an image: curl --data-binary @examples/golden_retriever.jpg "$url/explain?target=golden+retriever"
>>> serve.stop()

Routes (all answers are JSON):

* ``POST /explain``: the body is the image, either raw bytes (any ``Content-Type`` but multipart) or
  ``multipart/form-data`` with the image in a file field named ``image`` (or the only file field). Query parameters
  (or form fields): ``target`` (class id or name, any case; default: the predicted class), ``saliency`` (``png``,
  the default: a 16-bit greyscale PNG, value = round(65535 · map); ``npy``: the float32 map as a ``.npy`` file;
  ``none``), ``top_k`` (1..50, default 5). Answer: ``class_id``, ``class_name``, ``score``, ``topk``, ``target``,
  ``target_name``, ``target_score``, ``image_size``, ``crop_box``, ``resize_mode``, ``method``, ``backend``,
  ``precision``, ``batch_size`` (images in the backend call this request shared), ``timings`` and ``saliency``
  (``{"format", "encoding": "base64", "shape", "data"}``; :func:`decode_saliency` turns it back into the map).
* ``GET /healthz``: 200 while the replica runs (Ray Serve's own health check calls :meth:`check_health` too).
* ``GET /readyz``: 200 once the Engine is loaded and has run one warm-up explanation, else 503.
* ``GET /`` or ``/info``: the artifact, method, backend, classes and limits.

Bad requests get a 4xx with the engine's message and never stop a replica: 400 (not an image, bad target or
parameter), 404 / 405 (unknown route or method), 413 (body above ``max_bytes``, or an image above ``max_pixels``).
Anything unexpected is a 500 with the message; the replica keeps serving.

Dynamic batching: requests are decoded and checked in the HTTP handler (in a thread, so decoding overlaps
inference), then queued to a ``@serve.batch`` method that sends up to ``max_batch`` images, waiting at most
``batch_wait_ms`` for the batch to fill, to the backend in one call. Replicas are independent processes, each with
one Engine.

Nothing here imports Ray at module level (``pip install "xai-engine[serve]"`` for it); the request parsing and the
answers (:class:`ExplainService`) run without Ray, so they are tested without it.
"""

from __future__ import annotations

import asyncio
import base64
import email.parser
import email.policy
import io
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import EngineError, ImageDecodeError, InputError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "ExplainService",
    "HTTPError",
    "SERVE_INSTALL",
    "build_app",
    "decode_saliency",
    "encode_saliency",
    "start",
    "stop",
]

SERVE_INSTALL = 'pip install "xai-engine[serve]"'
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
SALIENCY_FORMATS = ("png", "npy", "none")
MAX_TOP_K = 50
APP_NAME = "xai-engine"


class HTTPError(Exception):
    """A request the service answers with ``status`` (4xx) and ``message`` (the engine's words)."""

    def __init__(self, status: int, message: str, kind: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind or "BadRequest"

    def body(self) -> dict[str, Any]:
        return {"error": self.message, "kind": self.kind, "status": self.status}


def _http_error(e: EngineError) -> HTTPError:
    """The engine's own error as a 4xx: too large (pixels) -> 413, anything else the client sent -> 400."""
    too_large = isinstance(e, ImageDecodeError) and e.too_large
    return HTTPError(413 if too_large else 400, str(e), type(e).__name__)


# --------------------------------------------------------------------------------------------------------------------
# Saliency encoding (also what clients use to read an answer back)
# --------------------------------------------------------------------------------------------------------------------


def encode_saliency(saliency: np.ndarray, fmt: str) -> dict[str, Any] | None:
    """A map in [0, 1] as the ``saliency`` field of an answer: ``png`` (16-bit greyscale, round(65535 · s)), ``npy``
    (float32, exact) or ``none`` (None)."""
    if fmt == "none":
        return None
    sal = np.asarray(saliency, dtype=np.float32)
    buf = io.BytesIO()
    if fmt == "npy":
        np.save(buf, sal, allow_pickle=False)
    elif fmt == "png":
        from PIL import Image

        levels = np.rint(np.clip(np.nan_to_num(sal), 0.0, 1.0) * 65535.0).astype(np.uint16)
        Image.fromarray(levels).save(buf, format="PNG")  # uint16 -> mode I;16: a 16-bit greyscale PNG
    else:
        raise InputError(f"saliency format must be one of {', '.join(SALIENCY_FORMATS)}, got {fmt!r}.")
    return {
        "format": fmt,
        "encoding": "base64",
        "shape": list(sal.shape),
        "data": base64.b64encode(buf.getvalue()).decode("ascii"),
    }


def decode_saliency(field: Mapping[str, Any]) -> np.ndarray:
    """The ``saliency`` field of an answer back to a float32 HxW map (``png``: to within 1/65535; ``npy``: exact)."""
    raw = base64.b64decode(field["data"])
    if field["format"] == "npy":
        return np.load(io.BytesIO(raw), allow_pickle=False)
    if field["format"] == "png":
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(raw)), dtype=np.float32) / 65535.0
    raise InputError(f"unknown saliency format {field.get('format')!r}; expected png or npy.")


# --------------------------------------------------------------------------------------------------------------------
# Requests and answers, without Ray
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """A checked request: the decoded image and what to answer with."""

    image: Any  # PIL image
    target: int  # -1: the predicted class
    saliency: str
    top_k: int
    decode_ms: float


def _multipart(body: bytes, content_type: str) -> tuple[bytes | None, dict[str, str]]:
    """The image (a file field named ``image``, else the only file field) and the text fields of a form."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not msg.is_multipart():
        raise HTTPError(400, "the multipart/form-data body could not be parsed (no parts); send the image as raw bytes")
    files: dict[str, bytes] = {}
    fields: dict[str, str] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if part.get_filename() is not None or name == "image":
            files[name or f"file{len(files)}"] = payload
        elif name:
            fields[name] = payload.decode("utf-8", "replace")
    if "image" in files:
        return files["image"], fields
    if len(files) == 1:
        return next(iter(files.values())), fields
    if files:
        raise HTTPError(400, f"the form has {len(files)} files ({', '.join(files)}); name the image's field 'image'")
    return None, fields


class ExplainService:
    """The HTTP semantics of ``xai-engine serve`` on one Engine: check a request, explain a batch, shape the answer.

    The Ray Serve deployment (:func:`build_app`) only moves bytes between HTTP and these methods.
    """

    def __init__(
        self,
        artifact: Any = None,
        *,
        backend: str = "auto",
        device: str = "auto",
        precision: str | None = None,
        threads: int | None = None,
        max_batch: int = 8,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_pixels: int | None = 64_000_000,
        resize_mode: str | None = None,
        engine: Any = None,
    ):
        from .api import Engine

        if max_batch < 1 or max_bytes < 1:
            raise InputError("max_batch and max_bytes must be >= 1.")
        self.engine = engine or Engine.load(
            artifact,
            backend,
            device=device,
            precision=precision,
            threads=threads,
            batch_size=max_batch,
            max_pixels=max_pixels,
            resize_mode=resize_mode,
        )
        self.engine.batch_size = max(self.engine.batch_size, max_batch)
        self.max_batch = max_batch
        self.max_bytes = max_bytes
        self.ready = False

    def warm_up(self) -> None:
        """One explanation of a grey image, so that the first request does not pay for the backend's first call."""
        from PIL import Image

        height, width = self.engine.artifact.preprocess.input_size
        self.engine.explain(Image.new("RGB", (width, height), (128, 128, 128)), keep_image=False)
        self.ready = True

    def info(self) -> dict[str, Any]:
        art = self.engine.artifact
        return {
            "artifact": art.name,
            "method": art.method,
            "backend": self.engine.backend_name,
            "precision": self.engine.backend.effective_precision,
            "classes": len(self.engine.class_names),
            "input_size": list(art.preprocess.input_size),
            "resize_mode": self.engine.preprocessor.config.resize_mode,
            "max_batch": self.max_batch,
            "max_bytes": self.max_bytes,
            "max_pixels": self.engine.max_pixels,
            "routes": {"POST /explain": "an image -> class and saliency", "GET /healthz": "", "GET /readyz": ""},
        }

    def check_length(self, content_length: str | None) -> None:
        """413 before reading a body whose declared length is above the limit."""
        if content_length is None:
            return
        try:
            n = int(content_length)
        except ValueError:
            raise HTTPError(400, f"bad Content-Length header {content_length!r}") from None
        if n > self.max_bytes:
            raise self.too_large(n)

    def too_large(self, n: int) -> HTTPError:
        return HTTPError(
            413,
            f"the request body has {n} bytes, above this server's limit of {self.max_bytes} "
            f"(xai-engine serve --max-bytes); send a smaller image",
            "PayloadTooLarge",
        )

    def prepare(self, body: bytes, content_type: str | None, query: Mapping[str, str]) -> Prepared:
        """Parse and check a ``POST /explain`` request and decode its image; :class:`HTTPError` on a bad one."""
        from .preprocess import load_image

        if len(body) > self.max_bytes:
            raise self.too_large(len(body))
        params = dict(query)
        image_bytes: bytes | None = body
        if (content_type or "").lower().startswith("multipart/"):
            image_bytes, fields = _multipart(body, content_type or "")
            params = {**fields, **params}  # the query string wins over form fields
        unknown = sorted(set(params) - {"target", "saliency", "top_k"})
        if unknown:
            raise HTTPError(400, f"unknown parameter(s) {', '.join(unknown)}; known: target, saliency, top_k")
        if not image_bytes:
            raise HTTPError(400, "the request has no image: POST the image's bytes, or a form with an 'image' file")
        fmt = params.get("saliency", "png").lower()
        if fmt not in SALIENCY_FORMATS:
            raise HTTPError(400, f"saliency={fmt!r}: choose one of {', '.join(SALIENCY_FORMATS)}")
        try:
            top_k = int(params.get("top_k", 5))
        except ValueError:
            raise HTTPError(400, f"top_k={params['top_k']!r} is not an integer") from None
        if not 1 <= top_k <= MAX_TOP_K:
            raise HTTPError(400, f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
        target = params.get("target")
        if target is not None and target.strip().lstrip("-").isdigit():
            target = int(target)
        try:
            target_id = self.engine.resolve_target(target if target != "" else None)
            t0 = time.perf_counter()
            image = load_image(image_bytes, max_pixels=self.engine.max_pixels, draft=self.engine._draft)
        except EngineError as e:
            raise _http_error(e) from None
        return Prepared(image, target_id, fmt, top_k, (time.perf_counter() - t0) * 1e3)

    def explain(self, batch: list[Prepared]) -> list[dict[str, Any]]:
        """One backend call for the whole batch; one answer per request, in order."""
        top_k = max(p.top_k for p in batch)
        results = self.engine.explain_batch(
            [p.image for p in batch], [p.target for p in batch], top_k=top_k, keep_image=False
        )
        return [self.answer(p, exp) for p, exp in zip(batch, results, strict=True)]

    def answer(self, prepared: Prepared, exp: Any) -> dict[str, Any]:
        timings = {**exp.timings, "decode_ms": prepared.decode_ms}
        return {
            "class_id": exp.class_id,
            "class_name": exp.class_name,
            "score": exp.score,
            "topk": [{"class_id": c, "class_name": n, "score": s} for c, n, s in exp.topk[: prepared.top_k]],
            "target": exp.target,
            "target_name": exp.target_name,
            "target_score": exp.target_score,
            "image_size": list(exp.source_size),
            "crop_box": None if exp.crop_box is None else list(exp.crop_box),
            "resize_mode": exp.resize_mode,
            "method": exp.method,
            "backend": exp.backend,
            "precision": exp.precision,
            "batch_size": timings.get("batch_size", 1),
            "timings": timings,
            "saliency": encode_saliency(exp.saliency, prepared.saliency),
        }


# --------------------------------------------------------------------------------------------------------------------
# Ray Serve
# --------------------------------------------------------------------------------------------------------------------


def _require_serve():
    try:
        import ray
        from ray import serve
        from starlette.responses import JSONResponse  # noqa: F401
    except ImportError as e:
        raise EngineError(f"xai-engine serve needs Ray Serve, which is not installed ({e}): {SERVE_INSTALL}") from None
    return ray, serve


def build_app(
    artifact: Any = None,
    *,
    replicas: int = 1,
    max_batch: int = 8,
    batch_wait_ms: float = 5.0,
    cpus_per_replica: float = 1.0,
    gpus_per_replica: float = 0.0,
    **service_options: Any,
):
    """The Ray Serve application (bound deployment) serving ``artifact``; ``service_options`` go to
    :class:`ExplainService` (backend, device, precision, threads, max_bytes, max_pixels, resize_mode)."""
    _, serve = _require_serve()
    from starlette.responses import JSONResponse

    if replicas < 1 or max_batch < 1 or batch_wait_ms < 0:
        raise InputError("replicas and max_batch must be >= 1 and batch_wait_ms >= 0.")
    from .artifact import default_artifact_path, load_artifact
    from .backends import select_backend

    # checked here, before any replica starts: a bad path or a missing runtime is one message, not a failed deploy
    art = load_artifact(default_artifact_path() if artifact is None else getattr(artifact, "path", artifact))
    select_backend(art, service_options.get("backend", "auto"))
    artifact = os.fspath(art.path)
    if gpus_per_replica > 0:
        service_options.setdefault("device", "cuda")

    class ExplainDeployment:
        def __init__(self) -> None:
            self.service = ExplainService(artifact, max_batch=max_batch, **service_options)
            self._batched.set_max_batch_size(max_batch)
            self._batched.set_batch_wait_timeout_s(batch_wait_ms / 1e3)
            self.service.warm_up()

        def check_health(self) -> None:  # Ray Serve restarts a replica whose check raises
            if not self.service.ready:
                raise RuntimeError("the Engine has not finished its warm-up explanation")

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=batch_wait_ms / 1e3)
        async def _batched(self, batch: list[Prepared]) -> list[Any]:
            try:
                return await asyncio.to_thread(self.service.explain, batch)
            except Exception as e:  # noqa: BLE001 - one answer per request, so that no caller hangs and the replica lives
                return [e] * len(batch)

        async def __call__(self, request):
            try:
                status, body = await self._route(request)
            except HTTPError as e:
                status, body = e.status, e.body()
            except Exception as e:  # noqa: BLE001 - unexpected: a 500 with the message; the replica keeps serving
                status, body = 500, {"error": f"{type(e).__name__}: {e}", "kind": "InternalError", "status": 500}
            return JSONResponse(body, status_code=status)

        async def _route(self, request) -> tuple[int, dict[str, Any]]:
            path, root = request.url.path, request.scope.get("root_path", "")
            if root and path.startswith(root):  # an app under a route prefix sees its own routes
                path = path[len(root) :]
            path = path.rstrip("/") or "/"
            method = request.method.upper()
            gets = {"/healthz", "/readyz", "/", "/info"}
            if path not in gets | {"/explain"}:
                raise HTTPError(404, f"no route {path}; POST /explain, GET /healthz, /readyz, /info", "NotFound")
            if (path == "/explain") != (method == "POST") and not (path in gets and method in ("GET", "HEAD")):
                raise HTTPError(405, f"{method} {path} is not allowed; POST /explain, GET the others", "BadMethod")
            if path == "/healthz":
                return 200, {"status": "ok"}
            if path == "/readyz":
                return (200, {"status": "ready"}) if self.service.ready else (503, {"status": "warming up"})
            if path in ("/", "/info"):
                return 200, self.service.info()
            self.service.check_length(request.headers.get("content-length"))
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > self.service.max_bytes:
                    raise self.service.too_large(len(body))
            prepared = await asyncio.to_thread(
                self.service.prepare, bytes(body), request.headers.get("content-type"), dict(request.query_params)
            )
            answer = await self._batched(prepared)
            if isinstance(answer, Exception):
                if isinstance(answer, EngineError):
                    raise _http_error(answer)
                raise answer
            return 200, answer

    deployment = serve.deployment(
        ExplainDeployment,
        name="ExplainDeployment",
        num_replicas=replicas,
        max_ongoing_requests=max(2 * max_batch, 16),
        ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
        health_check_period_s=10,
        graceful_shutdown_timeout_s=10,  # requests take a second at most: a stop need not wait Serve's default 20 s
        graceful_shutdown_wait_loop_s=0.5,
    )
    return deployment.bind()


_lock = threading.Lock()


def start(
    artifact: Any = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    ray_address: str | None = None,
    route_prefix: str = "/",
    **options: Any,
) -> str:
    """Start Ray (``ray_address``: a cluster, or None for a local one), Ray Serve on ``host:port`` and the app; return
    its URL once every replica is ready. ``options`` go to :func:`build_app`."""
    ray, serve = _require_serve()
    app = build_app(artifact, **options)
    with _lock:
        if not ray.is_initialized():
            ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name=APP_NAME, route_prefix=route_prefix)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}{route_prefix.rstrip('/')}"


def stop(shutdown_ray: bool = True, timeout_s: float = 30.0) -> None:
    """Stop Ray Serve (and the Ray this process started). Serve's own shutdown is given ``timeout_s``; a local Ray
    is then shut down whatever it did (which ends the replicas and the proxy with it), so a stop is bounded."""
    ray, serve = _require_serve()
    with _lock:
        if not ray.is_initialized():
            return
        done = threading.Thread(target=serve.shutdown, name="xai-engine-serve-shutdown", daemon=True)
        done.start()
        done.join(timeout_s)
        if shutdown_ray:
            ray.shutdown()
