"""Pretrained weights that cannot be downloaded: fail fast, with one message that names the ways out.

timm and open_clip download through huggingface_hub, which retries for about a minute when there is no network and
then raises ``LocalEntryNotFoundError``; torchvision downloads through ``torch.hub`` and raises ``URLError``. Around a
library's pretrained loader, :func:`fetching`:

1. finds where the weights would come from (:func:`timm_source`, :func:`torchvision_source`,
   :func:`open_clip_source`): a Hugging Face Hub repo, a URL, or a local file;
2. does nothing more when they are already in the library's local cache (``huggingface_hub.try_to_load_from_cache``,
   the torch hub checkpoint folder, open_clip's ``~/.cache/clip``) or are a local file;
3. otherwise fails at once when ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set (Hub weights), or when a short
   TCP connect to the download host (or the HTTPS proxy) does not succeed within :data:`PROBE_TIMEOUT_S` (one probe
   per host and process, see :func:`probe`);
4. turns what the download raises all the same (huggingface_hub errors, ``URLError``, ``OSError``, ``requests`` and
   ``httpx`` connection errors, open_clip's ``RuntimeError`` around them) into a
   :class:`~engine.errors.WeightsUnavailableError`.

Every step that reads a library's internals is best-effort: when the source cannot be found out, the probe is skipped
and only step 4 applies.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..errors import WeightsUnavailableError

PROBE_TIMEOUT_S = 2.5
_TRUE = {"1", "ON", "YES", "TRUE"}
_probe_results: dict[tuple[str, int], str | None] = {}
_probe_lock = threading.Lock()


@dataclass
class WeightSource:
    """Where a backbone's pretrained weights come from.

    Attributes:
        kind: ``"hf"`` (a Hugging Face Hub repo), ``"url"`` (a plain download into a cache folder) or ``"local"``.
        url: the Hub endpoint (``hf``) or the file's URL (``url``).
        hf_repo: the Hub repo id (``hf``).
        files: the file names the library tries, in order (``hf``), or the cached file's name (``url``).
        cache_dir: the folder the library caches the file in.
        cached: whether the file is in that cache already.
    """

    kind: str
    url: str = ""
    hf_repo: str | None = None
    files: tuple[str, ...] = ()
    cache_dir: str | None = None
    cached: bool = False

    @property
    def host(self) -> str:
        return urllib.parse.urlparse(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urllib.parse.urlparse(self.url)
        return parts.port or (80 if parts.scheme == "http" else 443)


# --- environment ----------------------------------------------------------------------------------------------------
def hf_offline() -> bool:
    """Whether Hugging Face Hub downloads are switched off (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    if any(os.environ.get(v, "").strip().upper() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    constants = _hf_constants()
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _hf_constants():
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    return constants


def hf_endpoint() -> str:
    constants = _hf_constants()
    return os.environ.get("HF_ENDPOINT") or getattr(constants, "ENDPOINT", None) or "https://huggingface.co"


def hf_cache_dir(cache_dir: str | None = None) -> str:
    if cache_dir:
        return str(cache_dir)
    constants = _hf_constants()
    default = os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub")
    return str(getattr(constants, "HF_HUB_CACHE", None) or default)


def torch_hub_checkpoints(cache_dir: str | None = None) -> str:
    """The folder ``torch.hub`` (torchvision, timm URL weights) keeps downloaded checkpoints in."""
    if cache_dir:
        return str(cache_dir)
    import torch.hub

    return os.path.join(torch.hub.get_dir(), "checkpoints")


def hf_cached(repo: str, files: tuple[str, ...], cache_dir: str | None = None) -> bool:
    """Whether one of ``files`` of Hub repo ``repo`` is in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    for name in files:
        try:
            found = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
        except Exception:  # noqa: BLE001  (a malformed repo id: the library will say so itself)
            continue
        if isinstance(found, str) and os.path.isfile(found):
            return True
    return False


def _url_source(url: str, cache_dir: str) -> WeightSource:
    name = os.path.basename(urllib.parse.urlparse(url).path)
    cached = os.path.isfile(os.path.join(cache_dir, name))
    return WeightSource("url", url, files=(name,), cache_dir=cache_dir, cached=cached)


def _hf_source(repo: str, files: tuple[str, ...], cache_dir: str | None) -> WeightSource:
    return WeightSource(
        "hf", hf_endpoint(), repo, files, hf_cache_dir(cache_dir), cached=hf_cached(repo, files, cache_dir)
    )


def _safe_alternatives(filename: str) -> tuple[str, ...]:
    """The file names timm / open_clip try for a Hub file: its safetensors twin first, then the file itself."""
    alternatives = {
        "pytorch_model.bin": "model.safetensors",
        "open_clip_pytorch_model.bin": "open_clip_model.safetensors",
    }
    if filename in alternatives:
        return alternatives[filename], filename
    if filename.endswith((".bin", ".pth")):
        return filename[:-4] + ".safetensors", filename
    return (filename,)


# --- where each library's weights come from -------------------------------------------------------------------------
def timm_source(name: str, kwargs: dict) -> WeightSource | None:
    """Where ``timm.create_model(name, pretrained=True, **kwargs)`` reads its weights from (None: unknown)."""
    cache_dir = kwargs.get("cache_dir")
    if kwargs.get("checkpoint_path"):
        return WeightSource("local")
    prefix, sep, model_id = name.partition(":")
    if sep and prefix == "hf-hub":
        return _hf_source(model_id.split("@")[0], _safe_alternatives("pytorch_model.bin"), cache_dir)
    if sep and prefix == "local-dir":
        return WeightSource("local")
    from timm.models import split_model_name_tag
    from timm.models._builder import _resolve_pretrained_source, resolve_pretrained_cfg

    arch, tag = split_model_name_tag(name)
    pretrained_cfg, overlay = kwargs.get("pretrained_cfg") or tag or None, kwargs.get("pretrained_cfg_overlay")
    cfg = resolve_pretrained_cfg(arch, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=overlay)
    load_from, where = _resolve_pretrained_source(cfg.to_dict())
    if load_from == "hf-hub":
        repo, filename = where if isinstance(where, tuple | list) else (where, "pytorch_model.bin")
        return _hf_source(repo, _safe_alternatives(filename), cache_dir)
    if load_from == "url":
        return _url_source(where, torch_hub_checkpoints(cache_dir))
    if load_from in ("file", "state_dict", "local-dir"):
        return WeightSource("local")
    return None


def torchvision_source(name: str) -> WeightSource | None:
    """Where ``torchvision.models.get_model(name, weights="DEFAULT")`` reads its weights from (None: unknown)."""
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    return _url_source(weights.url, torch_hub_checkpoints())


def open_clip_source(name: str, tag: str, kwargs: dict) -> WeightSource | None:
    """Where ``open_clip.create_model(name, pretrained=tag, **kwargs)`` reads its weights from (None: unknown)."""
    cache_dir = kwargs.get("cache_dir")
    prefix, sep, model_id = name.partition(":")
    if sep and prefix == "hf-hub":
        return _hf_source(model_id.split("@")[0], _safe_alternatives("open_clip_pytorch_model.bin"), cache_dir)
    if sep and prefix == "local-dir":
        return WeightSource("local")
    import open_clip.pretrained

    cfg = open_clip.pretrained.get_pretrained_cfg(name.replace("/", "-"), tag)
    if not cfg:
        return WeightSource("local") if os.path.isfile(tag) else None
    if cfg.get("file"):
        return WeightSource("local")
    if cfg.get("hf_hub") and open_clip.pretrained.has_hf_hub():
        repo, filename = os.path.split(cfg["hf_hub"])
        return _hf_source(repo, _safe_alternatives(filename or "open_clip_pytorch_model.bin"), cache_dir)
    if cfg.get("url"):
        return _url_source(cfg["url"], str(cache_dir or os.path.expanduser("~/.cache/clip")))
    return None


# --- the probe ------------------------------------------------------------------------------------------------------
def _connect(host: str, port: int, timeout: float) -> None:
    """Open and close one TCP connection (raises OSError when that fails)."""
    with socket.create_connection((host, port), timeout=timeout):
        pass


def _via_proxy(host: str, port: int) -> tuple[str, int]:
    """The host and port a download to ``host`` connects to: the HTTPS proxy's where one applies."""
    proxy = urllib.request.getproxies().get("https")
    if not proxy or urllib.request.proxy_bypass(host):
        return host, port
    parts = urllib.parse.urlparse(proxy if "://" in proxy else f"http://{proxy}")
    if not parts.hostname:
        return host, port
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 1080 if "socks" in parts.scheme else 80)


def probe(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Whether ``host:port`` (or the HTTPS proxy in front of it) answers a TCP connect within ``timeout`` seconds.

    Returns None when it does, else the reason it does not. The answer is kept for the life of the process.
    """
    target = _via_proxy(host, port)
    with _probe_lock:
        if target in _probe_results:
            return _probe_results[target]
    outcome: dict[str, str] = {}

    def run() -> None:
        try:
            _connect(target[0], target[1], timeout)
        except OSError as e:
            outcome["error"] = str(e) or type(e).__name__
        else:
            outcome["ok"] = ""

    # a thread bounds the name lookup too, which socket timeouts do not cover
    worker = threading.Thread(target=run, name="xai-engine-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    via = f" through the proxy {target[0]}:{target[1]}" if target != (host, port) else ""
    if "ok" in outcome:
        reason = None
    elif "error" in outcome:
        reason = f"no connection to {host}:{port}{via} ({outcome['error']})"
    else:
        reason = f"no answer from {host}:{port}{via} within {timeout:g} s"
    with _probe_lock:
        _probe_results[target] = reason
    return reason


# --- the message and the guard ------------------------------------------------------------------------------------
def unavailable_message(spec: str, source: WeightSource | None, reason: str) -> str:
    """One message: what could not be fetched, why, and the ways out."""
    if source is not None and source.kind == "hf":
        what = f"Hugging Face Hub repo {source.hf_repo} on {source.host}"
        cache = (
            f"or download them once where there is a network (`hf download {source.hf_repo}`, or this same command) "
            f"into the Hugging Face cache (here {source.cache_dir}; set by HF_HOME or HF_HUB_CACHE), bring that cache "
            "here and set HF_HUB_OFFLINE=1"
        )
    elif source is not None and source.kind == "url":
        what = source.url
        cache = (
            f"or put {source.files[0]} (downloaded from {source.url} where there is a network) into the cache folder "
            f"{source.cache_dir}"
            + (" (the torch hub cache, set by TORCH_HOME)" if "checkpoints" in (source.cache_dir or "") else "")
        )
    else:
        what = "the network"
        cache = (
            "or fill the library's cache where there is a network: the Hugging Face cache "
            f"({hf_cache_dir()}, then set HF_HUB_OFFLINE=1) or the torch hub cache ({torch_hub_checkpoints()}, "
            "set by TORCH_HOME)"
        )
    return (
        f"the pretrained weights of {spec} could not be fetched from {what}: {reason.rstrip('. ')}. Ways out: pass the "
        "classifier's weights as a local safetensors file with --weights FILE (API: weights=FILE); or use "
        f"--source random for a smoke test only (random weights: classes and scores are meaningless); {cache}."
    )


def _network_error_classes() -> tuple[type[BaseException], ...]:
    classes: list[type[BaseException]] = [OSError]  # URLError, requests' and huggingface_hub's errors are OSErrors
    with contextlib.suppress(ImportError):
        from huggingface_hub.errors import EntryNotFoundError

        classes.append(EntryNotFoundError)
    return tuple(classes)


def fetch_failure(error: BaseException) -> str | None:
    """A short description of the download failure behind ``error`` (its cause and context chain), or None when
    it is not a download failure."""
    network = _network_error_classes()
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        top = type(e).__module__.split(".")[0]
        if isinstance(e, network) or top.startswith(("httpx", "httpcore", "requests", "urllib3")):
            text = " ".join(str(e).split()) or type(e).__name__
            return f"{type(e).__name__}: {text[:300]}"
        e = e.__cause__ or e.__context__
    return None


def locate(find: Callable[[], WeightSource | None]) -> WeightSource | None:
    """``find()``, or None when it fails (it reads library internals, which change between versions)."""
    try:
        return find()
    except Exception:  # noqa: BLE001
        return None


def check_fetchable(spec: str, source: WeightSource | None) -> None:
    """Fail at once when the weights are not cached and cannot be downloaded (see the module docstring).

    Raises:
        WeightsUnavailableError: offline mode without a cached copy, or the download host does not answer.
    """
    if source is None or source.kind == "local" or source.cached:
        return
    if source.kind == "hf" and hf_offline():
        raise WeightsUnavailableError(
            unavailable_message(
                spec, source, "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set and they are not in the local cache"
            )
        )
    if source.host:
        reason = probe(source.host, source.port)
        if reason is not None:
            raise WeightsUnavailableError(unavailable_message(spec, source, reason))


@contextlib.contextmanager
def fetching(spec: str, find: Callable[[], WeightSource | None]) -> Iterator[WeightSource | None]:
    """Around a library's pretrained loader: check first (:func:`check_fetchable`), convert download errors after.

    Raises:
        WeightsUnavailableError: the weights could not be fetched; the message names the ways out.
    """
    source = locate(find)
    check_fetchable(spec, source)
    try:
        yield source
    except WeightsUnavailableError:
        raise
    except Exception as e:
        reason = fetch_failure(e)
        if reason is None:
            raise
        raise WeightsUnavailableError(unavailable_message(spec, source, reason)) from e
