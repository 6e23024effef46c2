"""The HTTP API of ``python -m carvana_seg serve``, started as a subprocess on a free loopback port, against a tiny
results directory (random-init models, threshold 1.0: every mask is empty, so compositing is checkable exactly):
formats and headers, every bad input a 4xx JSON naming the problem (the server keeps serving), the upload and
pixel limits, the bounded queue's 503 + Retry-After, the API key, /metrics, /docs and the page."""

from __future__ import annotations

import base64
import io
import json
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from carvana_seg.serve.compose import cover
from tests.serve.helpers import BAD_INPUTS, jpeg, png, tiny_run

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("results") / "tiny")


@pytest.fixture(scope="module")
def url(run_dir, start_server) -> str:
    return start_server(
        "--models",
        str(run_dir),
        "--device",
        "cpu",
        "--backend",
        "torch",
        "--max-upload-mb",
        "1",
        "--max-megapixels",
        "4",
        "--concurrency",
        "1",
        "--queue",
        "0",
    )


def cut(url: str, photo: bytes | None = None, files: dict | None = None, **fields: str) -> requests.Response:
    files = files if files is not None else {"image_file": ("car.jpg", photo if photo is not None else jpeg())}
    return requests.post(url + "/v1/cutout", files=files, data=fields, timeout=60)


def test_health_model_docs_and_page(url):
    assert requests.get(url + "/healthz", timeout=10).json() == {"status": "ok", "run": "tiny"}
    model = requests.get(url + "/v1/model", timeout=10).json()
    assert model["threshold"] == 1.0 and model["oof_dice"] == 0.5 and model["device"] == "cpu"
    assert model["variants"] == [{"name": "a", "width": 64, "height": 32, "weight": 1.0, "folds": ["fold0"]}]
    assert model["trained_on"]["source"] == "unknown" and model["trained_on"]["notice"] is None  # no data/ beside it
    assert model["trained_on"]["network_sizes"] == ["64x32"]
    assert requests.get(url + "/docs", timeout=10).status_code == 200
    spec = requests.get(url + "/openapi.json", timeout=10).json()
    assert "image_file" in json.dumps(spec["paths"]["/v1/cutout"])
    page = requests.get(url + "/", timeout=10)
    assert page.status_code == 200 and "/static/app.js" in page.text
    script = requests.get(url + "/static/app.js", timeout=10).text
    assert "/v1/cutout" in script and "https://" not in page.text + script  # no CDN: works offline


def test_cutout_formats_and_headers(url):
    r = cut(url, jpeg(240, 160))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert (r.headers["X-Width"], r.headers["X-Height"], r.headers["X-Run"]) == ("240", "160", "tiny")
    assert float(r.headers["X-Threshold"]) == 1.0 and r.headers["X-Config-Hash"] == "cafe01"
    assert "infer;dur=" in r.headers["Server-Timing"]
    assert r.headers["X-Confidence"] == "0.0000"  # p near 0.5 everywhere, nothing kept: no confidence at all
    im = Image.open(io.BytesIO(r.content))
    assert im.mode == "RGBA" and im.size == (240, 160)
    assert np.asarray(im)[..., 3].max() == 0  # threshold 1.0: nothing is car
    r = cut(url, channels="alpha")
    assert r.status_code == 200, r.text
    alpha = Image.open(io.BytesIO(r.content))
    assert alpha.mode == "L" and alpha.size == (240, 160)
    assert cut(url, format="jpg").headers["content-type"] == "image/jpeg"
    with zipfile.ZipFile(io.BytesIO(cut(url, format="zip").content)) as zf:
        assert sorted(zf.namelist()) == ["alpha.png", "color.jpg"]
    body = cut(url, format="json").json()
    assert (body["width"], body["height"], body["rle_mask"], body["threshold"]) == (240, 160, "", 1.0)
    assert body["confidence"] == 0.0
    b64 = base64.b64encode(jpeg()).decode()
    assert cut(url, files={}, image_file_b64=b64, format="json").json()["width"] == 240
    preview = Image.open(io.BytesIO(cut(url, jpeg(1200, 800), size="preview").content))
    assert preview.size[0] * preview.size[1] <= 250_000 and preview.size[0] > 500


def test_background_colour_and_picture(url):
    r = cut(url, bg_color="#ff8000")
    rgb = np.asarray(Image.open(io.BytesIO(r.content)))
    assert rgb.shape == (160, 240, 3) and (rgb == (255, 128, 0)).all()  # empty mask: all background
    bg = np.random.default_rng(1).integers(0, 255, (90, 100, 3), dtype=np.uint8)
    files = {"image_file": ("car.jpg", jpeg()), "bg_image_file": ("bg.png", png(bg))}
    got = np.asarray(Image.open(io.BytesIO(cut(url, files=files).content)))
    assert np.array_equal(got, cover(bg, (160, 240)))


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_4xx_json_naming_it_and_the_server_keeps_serving(url, case):
    files, fields, status, words = BAD_INPUTS[case]
    r = cut(url, files=files, **fields)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"], r.json()
    assert cut(url).status_code == 200


def test_full_queue_answers_503_with_retry_after(url):
    big = jpeg(1918, 1280)
    codes, headers, barrier = [], [], threading.Barrier(6)

    def one() -> None:
        barrier.wait()
        r = cut(url, big)
        codes.append(r.status_code)
        headers.append(r.headers.get("Retry-After"))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 200 in codes and 503 in codes, codes  # --concurrency 1 --queue 0
    assert all(h and int(h) >= 1 for c, h in zip(codes, headers) if c == 503)
    assert cut(url).status_code == 200


def test_metrics_count_requests_by_status(url):
    cut(url, files={"image_file": ("x.jpg", b"")})
    text = requests.get(url + "/metrics", timeout=10).text
    assert 'carvana_seg_requests_total{path="/v1/cutout",status="400"}' in text
    assert "carvana_seg_request_seconds_bucket" in text and "carvana_seg_in_flight" in text


def test_api_key_from_the_environment(run_dir, start_server):
    url = start_server(
        "--models", str(run_dir), "--device", "cpu", "--backend", "torch", env={"CARVANA_SEG_API_KEY": "s3cret"}
    )
    assert requests.get(url + "/v1/model", timeout=10).status_code == 401
    assert requests.get(url + "/v1/model", headers={"X-Api-Key": "nope"}, timeout=10).status_code == 403
    assert requests.get(url + "/v1/model", headers={"X-Api-Key": "s3cret"}, timeout=10).status_code == 200
    r = requests.post(url + "/v1/cutout", files={"image_file": ("c.jpg", jpeg())}, timeout=60)
    assert r.status_code == 401 and "X-Api-Key" in r.json()["error"]["message"]
    assert requests.get(url + "/healthz", timeout=10).status_code == 200  # probes need no key


def test_onnx_backend_serves_the_same_cutouts(run_dir, start_server, url, tmp_path):
    """The default on a CPU (``--backend auto``): every checkpoint exported once, then ONNX Runtime."""
    onnx_url = start_server("--models", str(run_dir), "--device", "cpu")
    assert requests.get(onnx_url + "/v1/model", timeout=10).json()["backend"] == "onnx"
    assert (run_dir / "onnx" / "a" / "fold0.onnx").is_file()
    a, b = cut(onnx_url, format="json"), cut(url, format="json")
    assert a.status_code == b.status_code == 200 and a.json()["rle_mask"] == b.json()["rle_mask"]
