"""Pretrained weights that cannot be fetched: fail fast offline, one message that names the ways out (exit code 2).

Nothing here touches the network: the probe's connect is replaced for every test, and the library loaders are
replaced wherever a test gets past the probe.
"""

from __future__ import annotations

import socket
import time
import urllib.error

import pytest

from engine._compat import ensure_torchvision
from engine.backbones import build_backbone, fetch
from engine.cli import main
from engine.config import BackboneConfig
from engine.errors import UnsupportedModelError, WeightsUnavailableError

ensure_torchvision()

WAYS_OUT = ("--weights FILE", "--source random")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No proxy, no offline switch, an empty probe cache, and a connect that fails like this offline machine's."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(fetch, "_probe_results", {})
    calls: list[tuple[str, int]] = []

    def refuse(host, port, timeout):
        calls.append((host, port))
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(fetch, "_connect", refuse)
    return calls


def _no_pretrained_load(monkeypatch):
    """Make any pretrained load of timm or torchvision fail the test (the probe must stop it first)."""
    import timm
    import torchvision

    def timm_create(name, pretrained=False, **kwargs):
        pytest.fail(f"timm.create_model({name!r}, pretrained=True) ran although the hub cannot be reached")

    def tv_get(name, weights=None, **kwargs):
        pytest.fail(f"torchvision.models.get_model({name!r}, weights={weights!r}) ran although offline")

    monkeypatch.setattr(timm, "create_model", timm_create)
    monkeypatch.setattr(torchvision.models, "get_model", tv_get)


def test_offline_timm_create_fails_at_once_with_the_ways_out(offline, monkeypatch, tmp_path, capsys):
    _no_pretrained_load(monkeypatch)
    monkeypatch.setattr(fetch, "hf_cached", lambda *a, **k: False)
    start = time.monotonic()
    code = main(
        ["create", "--method", "vit-reciprocam", "--backbone", "timm/vit_tiny_patch16_224", "--source", "pretrained"]
        + ["--out", str(tmp_path / "a")]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert time.monotonic() - start < 20  # no minute of hub retries
    assert offline == [("huggingface.co", 443)], "one probe of the hub"
    assert err.count("\n") == 1 and "Traceback" not in err, err  # one line
    assert "could not be fetched" in err and "timm/vit_tiny_patch16_224" in err
    assert "Name or service not known" in err
    assert all(w in err for w in WAYS_OUT) and "HF_HUB_OFFLINE=1" in err
    assert "hf download timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k" in err
    assert not (tmp_path / "a").exists()


def test_offline_torchvision_create_names_the_torch_hub_cache(offline, monkeypatch, tmp_path, capsys):
    _no_pretrained_load(monkeypatch)
    import torch.hub

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    code = main(
        ["create", "--method", "reciprocam", "--backbone", "torchvision/resnet18", "--source", "pretrained"]
        + ["--out", str(tmp_path / "a")]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert offline == [("download.pytorch.org", 443)]
    assert "could not be fetched" in err and all(w in err for w in WAYS_OUT)
    assert "resnet18-f37072fd.pth (downloaded from https://download.pytorch.org/models/resnet18-f37072fd.pth" in err
    assert str(tmp_path / "hub" / "checkpoints") in err and "TORCH_HOME" in err


def test_hf_offline_without_a_cached_copy_fails_without_a_probe(offline, monkeypatch, tmp_path):
    _no_pretrained_load(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = BackboneConfig("timm", "vit_tiny_patch16_224", weights="pretrained", kwargs={"cache_dir": str(tmp_path)})
    with pytest.raises(WeightsUnavailableError, match=r"HF_HUB_OFFLINE .*is set and they are not in the local cache"):
        build_backbone(cfg)
    assert offline == [], "offline mode needs no probe"


def _fake_hf_cache(root, repo: str, filename: str) -> None:
    """The layout huggingface_hub keeps a downloaded file in."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    snap = folder / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap / filename).write_bytes(b"x")


def test_weights_in_the_cache_skip_the_probe(offline, tmp_path, monkeypatch):
    repo = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    source = fetch.timm_source("vit_tiny_patch16_224", {"cache_dir": str(tmp_path)})
    assert (source.kind, source.hf_repo, source.cached) == ("hf", repo, False)
    assert source.files == ("model.safetensors", "pytorch_model.bin")
    _fake_hf_cache(tmp_path, repo, "model.safetensors")
    source = fetch.timm_source("vit_tiny_patch16_224", {"cache_dir": str(tmp_path)})
    assert source.cached
    fetch.check_fetchable("timm/vit_tiny_patch16_224", source)  # no probe, no error
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fetch.check_fetchable("timm/vit_tiny_patch16_224", source)  # offline with a cached copy: the library reads it
    # torchvision: the torch hub checkpoint folder
    import torch.hub

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert not fetch.torchvision_source("resnet18").cached
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth").write_bytes(b"x")
    source = fetch.torchvision_source("resnet18")
    assert source.cached
    fetch.check_fetchable("torchvision/resnet18", source)
    assert offline == [], "cached weights need no probe"


def test_probe_is_short_and_asked_once_per_host(monkeypatch):
    calls = []

    def slow(host, port, timeout):
        calls.append(timeout)
        time.sleep(5)

    monkeypatch.setattr(fetch, "_connect", slow)
    start = time.monotonic()
    reason = fetch.probe("hub.example", 443, timeout=0.3)
    assert time.monotonic() - start < 2, "a hanging name lookup or connect is cut short"
    assert reason == "no answer from hub.example:443 within 0.3 s"
    assert fetch.probe("hub.example", 443, timeout=0.3) == reason and len(calls) == 1, "one probe per process"
    monkeypatch.setattr(fetch, "_connect", lambda host, port, timeout: calls.append(host))
    assert fetch.probe("other.example", 443) is None and calls[-1] == "other.example"
    assert fetch.probe("other.example", 443) is None and len(calls) == 2


def test_probe_goes_to_the_https_proxy(offline, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    monkeypatch.setenv("https_proxy", "http://proxy.corp:3128")
    reason = fetch.probe("huggingface.co", 443)
    assert offline == [("proxy.corp", 3128)]
    assert "through the proxy proxy.corp:3128" in reason


def _hub_error():
    from huggingface_hub.errors import LocalEntryNotFoundError

    return LocalEntryNotFoundError(
        "An error happened while trying to locate the file on the Hub and we cannot find the requested files in the "
        "local cache. Please check your connection and try again or make sure your Internet connection is on."
    )


def _requests_error():
    requests = pytest.importorskip("requests")
    return requests.exceptions.ConnectionError("HTTPSConnectionPool(host='huggingface.co', port=443): Max retries")


@pytest.mark.parametrize(
    ("backbone", "make_error", "expect"),
    [
        ("timm/vit_tiny_patch16_224", _hub_error, "LocalEntryNotFoundError: An error happened"),
        ("timm/vit_tiny_patch16_224", _requests_error, "ConnectionError: HTTPSConnectionPool"),
        ("timm/vit_tiny_patch16_224", lambda: OSError(28, "No space left on device"), "No space left on device"),
        (
            "torchvision/resnet18",
            lambda: urllib.error.URLError(socket.gaierror(-2, "Name or service not known")),
            "URLError: <urlopen error [Errno -2] Name or service not known>",
        ),
    ],
)
def test_download_errors_become_one_message(offline, monkeypatch, tmp_path, capsys, backbone, make_error, expect):
    """The host answered the probe, then the download failed all the same: the library's error is converted."""
    import timm
    import torchvision

    monkeypatch.setattr(fetch, "_connect", lambda host, port, timeout: None)
    monkeypatch.setattr(fetch, "hf_cached", lambda *a, **k: False)
    import torch.hub

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def fail(*args, **kwargs):
        raise make_error()

    monkeypatch.setattr(timm, "create_model", fail)
    monkeypatch.setattr(torchvision.models, "get_model", fail)
    code = main(
        ["create", "--method", "reciprocam", "--backbone", backbone, "--source", "pretrained"]
        + [
            "--out",
            str(tmp_path / "a"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"xai-engine create: error: the pretrained weights of {backbone} could not be fetched")
    assert expect in err and all(w in err for w in WAYS_OUT)
    assert "Traceback" not in err and ".. Ways out" not in err and err.count("\n") == 1
    assert ("HF_HUB_OFFLINE=1" in err) == backbone.startswith("timm/")


def test_open_clip_wrapped_download_error_is_converted(offline, monkeypatch):
    open_clip = pytest.importorskip("open_clip")
    monkeypatch.setattr(fetch, "_connect", lambda host, port, timeout: None)
    monkeypatch.setattr(fetch, "hf_cached", lambda *a, **k: False)

    def fail(name, pretrained=None, **kwargs):  # what open_clip.create_model does around a failed download
        try:
            raise _hub_error()
        except OSError as e:
            raise RuntimeError(f"Failed to download weights for tag '{pretrained}': {e}")  # noqa: B904

    monkeypatch.setattr(open_clip, "create_model", fail)
    cfg = BackboneConfig("open_clip", "ViT-B-16", weights="pretrained", kwargs={"pretrained": "openai"})
    with pytest.raises(WeightsUnavailableError) as info:
        build_backbone(cfg)
    msg = str(info.value)
    assert "open_clip/ViT-B-16 could not be fetched" in msg and "timm/vit_base_patch16_clip_224.openai" in msg
    assert "LocalEntryNotFoundError" in msg and "HF_HUB_OFFLINE=1" in msg


def test_other_errors_are_left_alone(offline):
    """An unknown model name is not a download failure: no probe, the usual message."""
    cfg = BackboneConfig("timm", "no_such_model_xyz", weights="pretrained")
    with pytest.raises(UnsupportedModelError, match="timm cannot build 'no_such_model_xyz'"):
        build_backbone(cfg)
    assert offline == []
