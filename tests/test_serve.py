"""``xai-engine serve`` / :mod:`engine.serve`: the request checks and answers without Ray (raw and multipart bodies,
targets by id and name, saliency as PNG and .npy, every bad request a 4xx with the engine's message), and a Ray Serve
round trip through the CLI (good, bad, then good again: the replica lives)."""

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import Engine
from engine.serve import ExplainService, HTTPError, decode_saliency, encode_saliency

ARTIFACT = "reciprocam-efficientnet_lite0-onnx"
HAS_SERVE = all(__import__("importlib.util").util.find_spec(m) is not None for m in ("ray", "starlette"))


@pytest.fixture(scope="module")
def service() -> ExplainService:
    svc = ExplainService(ARTIFACT, backend="onnxruntime", max_batch=4, max_bytes=2_000_000, max_pixels=4_000_000)
    svc.warm_up()
    return svc


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(ARTIFACT, backend="onnxruntime")


def _form(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body as a browser or ``requests`` would send it."""
    boundary = "----xai-engine-test-7d1f"
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        out.write(f"{head}Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def _status(fn, *args) -> tuple[int, str]:
    with pytest.raises(HTTPError) as info:
        fn(*args)
    return info.value.status, info.value.message


def test_raw_body_answer_equals_engine_explain(service, engine, example_images):
    data = example_images[1].read_bytes()
    (answer,) = service.explain([service.prepare(data, "image/jpeg", {"saliency": "npy", "top_k": "3"})])
    ref = engine.explain(data)
    assert answer["class_id"] == ref.class_id and answer["class_name"] == ref.class_name
    assert answer["score"] == pytest.approx(ref.score, rel=1e-6) and len(answer["topk"]) == 3
    assert [t["class_id"] for t in answer["topk"]] == [c for c, _, _ in ref.topk[:3]]
    assert answer["image_size"] == list(ref.source_size) and answer["crop_box"] == list(ref.crop_box)
    np.testing.assert_array_equal(decode_saliency(answer["saliency"]), ref.saliency)
    json.dumps(answer)  # the answer is plain JSON


def test_multipart_with_target_name_and_png_map(service, engine, example_images):
    data = example_images[0].read_bytes()
    body, ctype = _form({"target": "Golden Retriever"}, {"image": ("a.jpg", data)})
    (answer,) = service.explain([service.prepare(body, ctype, {})])
    ref = engine.explain(data, target="golden retriever")
    assert answer["target_name"] == "golden retriever" and answer["target"] == ref.target
    sal = decode_saliency(answer["saliency"])
    assert answer["saliency"]["format"] == "png" and sal.shape == ref.saliency.shape
    assert np.abs(sal - ref.saliency).max() <= 0.5 / 65535 + 1e-7  # 16-bit PNG: rounding only
    # the query string wins over a form field; a lone file field in any name is the image
    body, ctype = _form({"target": "timber wolf"}, {"upload": ("a.jpg", data)})
    prepared = service.prepare(body, ctype, {"target": "1"})
    assert prepared.target == 1


def test_one_batch_gives_each_request_its_own_answer(service, engine, example_images):
    datas = [p.read_bytes() for p in example_images[:3]]
    batch = [
        service.prepare(d, None, {"saliency": "npy", "target": t})
        for d, t in zip(datas, ["", "0", "timber wolf"], strict=True)
    ]
    answers = service.explain(batch)
    assert [a["batch_size"] for a in answers] == [3, 3, 3]
    for data, t, answer in zip(datas, [None, 0, "timber wolf"], answers, strict=True):
        ref = engine.explain(data, target=t)
        assert answer["target"] == ref.target
        np.testing.assert_allclose(decode_saliency(answer["saliency"]), ref.saliency, atol=1e-6)


@pytest.mark.parametrize(
    ("body", "query", "status", "words"),
    [
        (b"not an image at all", {}, 400, "not an image"),
        (b"", {}, 400, "has no image"),
        (None, {"target": "golden retriver"}, 400, "Close names: 'golden retriever'"),
        (None, {"target": "5000"}, 400, "5000"),
        (None, {"saliency": "jpeg"}, 400, "png, npy, none"),
        (None, {"top_k": "0"}, 400, "between 1 and 50"),
        (None, {"top_k": "many"}, 400, "not an integer"),
        (None, {"colour": "red"}, 400, "unknown parameter"),
        (b"x" * 2_000_001, {}, 413, "--max-bytes"),
    ],
)
def test_bad_requests_are_4xx_with_the_engines_message(service, example_images, body, query, status, words):
    body = example_images[0].read_bytes() if body is None else body
    got, message = _status(service.prepare, body, "application/octet-stream", query)
    assert got == status and words in message, message


def test_bad_headers_forms_and_bombs(service, example_images):
    assert _status(service.check_length, "3000000")[0] == 413
    assert _status(service.check_length, "lots")[0] == 400
    service.check_length("100")  # under the limit: no error
    data = example_images[0].read_bytes()
    body, ctype = _form({}, {"a": ("a.jpg", data), "b": ("b.jpg", data)})
    assert "name the image's field 'image'" in _status(service.prepare, body, ctype, {})[1]
    buf = io.BytesIO()
    Image.new("RGB", (2100, 2000)).save(buf, format="PNG")  # 4.2 MP: above this service's max_pixels
    status, message = _status(service.prepare, buf.getvalue(), "image/png", {})
    assert status == 413 and "decompression-bomb" in message


def test_saliency_encodings_round_trip():
    rng = np.random.default_rng(0)
    sal = rng.random((7, 5), dtype=np.float32)
    np.testing.assert_array_equal(decode_saliency(encode_saliency(sal, "npy")), sal)
    png = encode_saliency(sal, "png")
    raw = base64.b64decode(png["data"])
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(io.BytesIO(raw)).mode.startswith("I;16")
    np.testing.assert_allclose(decode_saliency(png), sal, atol=0.5 / 65535 + 1e-7)
    assert encode_saliency(sal, "none") is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, data: bytes | None = None, ctype: str = "application/octet-stream") -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.skipif(not HAS_SERVE, reason='needs Ray Serve: pip install "xai-engine[serve]"')
def test_ray_serve_round_trip_through_the_cli(engine, example_images, tmp_path):
    """``xai-engine serve`` on local Ray: a good request, a bad one (400, the engine's message), then a good multipart
    one (the replica lived), health and readiness; SIGTERM (what a service manager sends; Ray installs its own handler)
    stops it cleanly with exit code 0. About 30 s, most of it Ray."""
    port = _free_port()
    argv = [sys.executable, "-m", "engine.cli", "serve", ARTIFACT, "--port", str(port), "--backend", "onnxruntime"]
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([*argv, "--max-batch", "4"], start_new_session=True, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        # ready = the CLI says it serves (serve.run has returned) and the replica answers /readyz
        while time.monotonic() < deadline and proc.poll() is None:
            if "serving on" in Path(log.name).read_text():
                try:
                    if _request(f"{url}/readyz")[0] == 200:
                        break
                except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                    pass
            time.sleep(0.5)
        assert proc.poll() is None, Path(log.name).read_text()[-3000:]
        assert _request(f"{url}/healthz") == (200, {"status": "ok"})

        data = example_images[0].read_bytes()
        status, answer = _request(f"{url}/explain?saliency=npy", data, "image/jpeg")
        ref = engine.explain(data)
        assert status == 200 and answer["class_name"] == ref.class_name, answer
        np.testing.assert_allclose(decode_saliency(answer["saliency"]), ref.saliency, atol=1e-6)

        status, answer = _request(f"{url}/explain", b"<html>not an image</html>", "text/html")
        assert status == 400 and answer["kind"] == "ImageDecodeError" and "not an image" in answer["error"]

        body, ctype = _form({"target": "timber wolf"}, {"image": ("w.jpg", example_images[-1].read_bytes())})
        status, answer = _request(f"{url}/explain", body, ctype)
        assert status == 200 and answer["target_name"] == "timber wolf" and answer["saliency"]["format"] == "png"
        assert _request(f"{url}/nowhere")[0] == 404
        assert _request(f"{url}/info")[1]["backend"] == "onnxruntime"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=120)  # engine.serve.stop() is bounded: Serve gets 30 s, then Ray is shut down
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    assert proc.returncode == 0, Path(log.name).read_text()[-3000:]
    assert "stopping" in Path(log.name).read_text()
