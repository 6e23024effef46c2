"""The drop-in endpoints (serve/dropin.py) against a real ``serve`` process: an unmodified remove.bg client from the
package registry (``removebg``, its endpoint pointed at the loopback server) and rembg-style multipart posts get the
same masks as ``/v1/cutout``; every bad input of the cut-out API is a 4xx on both, never a 500; no URL is fetched.

The run is one random-init model at threshold 0.5, so that its masks are neither empty nor full: equal masks then
show the same inference path, not two empty answers."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import requests
from PIL import Image

from carvana_seg.serve import compose, dropin
from carvana_seg.serve.inputs import InputError
from tests.serve.helpers import BAD_INPUTS, jpeg, tiny_run

PHOTO = jpeg(800, 600)  # 0.48 MP: size=regular (0.25 MP) scales it down


@pytest.fixture(scope="module")
def url(tmp_path_factory, start_server) -> str:
    run = tiny_run(tmp_path_factory.mktemp("results") / "tiny", threshold=0.5)
    args = ("--models", str(run), "--device", "cpu", "--backend", "torch", "--max-upload-mb", "1")
    return start_server(*args, "--max-megapixels", "4", "--concurrency", "1", "--queue", "4")


def alpha_of(content: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(content))
    return np.asarray(im)[..., 3] if im.mode == "RGBA" else np.asarray(im.convert("L"))


def cutout_alpha(url: str, **fields: str) -> np.ndarray:
    r = requests.post(url + "/v1/cutout", files={"image_file": ("car.jpg", PHOTO)}, data=fields, timeout=60)
    assert r.status_code == 200, r.text
    return alpha_of(r.content)


@pytest.mark.server
def test_an_unmodified_removebg_client_gets_the_cutouts_masks(url, tmp_path, monkeypatch):
    from removebg import removebg as client_module  # the registry's `removebg` package, as its users install it

    monkeypatch.setattr(client_module, "API_ENDPOINT", url + "/v1.0/removebg")  # its base URL, on loopback
    client = client_module.RemoveBg("any-key", str(tmp_path / "removebg-errors.log"))
    photo = tmp_path / "car.jpg"
    photo.write_bytes(PHOTO)
    client.remove_background_from_img_file(str(photo), size="auto")
    got, want = alpha_of((tmp_path / "car.jpg_no_bg.png").read_bytes()), cutout_alpha(url)
    assert got.shape == (600, 800) and 0 < (want > 0).mean() < 1, "a trivial mask shows nothing"
    assert np.array_equal(got, want)

    out = tmp_path / "b64.png"  # the base64 path (urlencoded) and remove.bg's default size, regular = 0.25 MP
    client.remove_background_from_base64_img(base64.b64encode(PHOTO).decode(), new_file_name=str(out))
    small = alpha_of(out.read_bytes())
    assert small.size <= 250_000 and np.array_equal(small, cutout_alpha(url, size="regular"))

    with pytest.raises(requests.HTTPError) as err:  # no URL is ever fetched (SSRF)
        client.remove_background_from_img_url("http://169.254.169.254/latest/meta-data/")
    assert err.value.response.status_code == 400
    assert err.value.response.json()["errors"][0]["code"] == "url_not_fetched"


@pytest.mark.server
def test_removebg_answers_like_remove_bg(url):
    def post(headers: dict | None = None, **fields: str) -> requests.Response:
        files = {"image_file": ("car.jpg", PHOTO)}
        return requests.post(url + "/v1.0/removebg", files=files, data=fields, headers=headers, timeout=60)

    r = post(type="car", add_shadow="false", semitransparency="true")  # accepted and ignored
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert (r.headers["X-Width"], r.headers["X-Height"], r.headers["X-Type"]) == ("800", "600", "car")
    assert 0 < float(r.headers["X-Confidence"]) < 1  # a random network at 0.5: neither sure nor hopeless
    assert post(bg_color="white").headers["content-type"] == "image/jpeg"  # format=auto: opaque answer -> JPG
    medium = Image.open(io.BytesIO(post(size="medium", format="png").content))
    assert medium.size == (800, 600)  # 0.48 MP is under medium's 1.5 MP
    body = post({"Accept": "application/json"}).json()["data"]
    assert f"{body['confidence']:.4f}" == r.headers["X-Confidence"]
    assert np.array_equal(alpha_of(base64.b64decode(body["result_b64"])), cutout_alpha(url))
    b64 = base64.b64encode(PHOTO).decode()
    r = requests.post(url + "/v1.0/removebg", json={"image_file_b64": b64, "size": "auto", "channels": "alpha"})
    assert r.status_code == 200 and np.array_equal(alpha_of(r.content), cutout_alpha(url, channels="alpha"))
    big = requests.post(url + "/v1.0/removebg", json={"image_file_b64": "A" * 1_500_000}, timeout=60)
    assert big.status_code == 400 and big.json()["errors"][0]["code"] == "too_large"  # over the 1 MB upload limit
    for fields, code in (({"roi": "10% 10% 90% 90%"}, "unsupported"), ({"sharpen": "1"}, "unknown_parameter")):
        r = post(**fields)
        assert r.status_code == 400 and r.json()["errors"][0]["code"] == code, r.text


@pytest.mark.server
def test_rembg_style_posts_get_the_cutouts_masks(url):
    def post(params: dict | None = None, **fields: str) -> requests.Response:
        files = {"file": ("car.jpg", PHOTO)}
        return requests.post(url + "/api/remove", files=files, data=fields, params=params, timeout=60)

    r = post(model="u2net", a="false")  # rembg's model and alpha-matting fields: accepted and ignored
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.headers["X-Run"] == "tiny"
    assert Image.open(io.BytesIO(r.content)).mode == "RGBA"
    assert np.array_equal(alpha_of(r.content), cutout_alpha(url))
    mask = Image.open(io.BytesIO(post(om="true").content))
    assert mask.mode == "L" and np.array_equal(np.asarray(mask), cutout_alpha(url, channels="alpha"))
    red = np.asarray(Image.open(io.BytesIO(post({"bgc": "255,0,0,255"}).content)))
    ours = requests.post(url + "/v1/cutout", files={"image_file": ("c.jpg", PHOTO)}, data={"bg_color": "ff0000ff"})
    want = np.asarray(Image.open(io.BytesIO(ours.content)))
    assert np.array_equal(red, want)
    assert post(bgc="300,0,0").status_code == 422 and post(bgc="\u00b2,0,0").status_code == 422  # "²" is a digit
    r = requests.post(url + "/api/remove", files={"file": ("c.jpg", PHOTO)}, data={"file_b64": "x"}, timeout=60)
    assert r.status_code == 422 and "unknown form field" in r.json()["detail"]  # rembg takes files only
    r = requests.get(url + "/api/remove", params={"url": "http://127.0.0.1:1/"}, timeout=10)
    assert r.status_code == 400 and "fetches no URL" in r.json()["detail"]


@pytest.mark.server
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_every_bad_input_is_a_4xx_on_both_drop_ins(url, case):
    files, fields, _status, words = BAD_INPUTS[case]
    files = files if files is not None else {"image_file": ("car.jpg", PHOTO)}
    r = requests.post(url + "/v1.0/removebg", files=files, data=fields, timeout=60)
    assert r.status_code == 400, r.text  # remove.bg answers every bad input with 400
    assert words in r.json()["errors"][0]["title"], r.json()
    rembg_files = {("file" if k == "image_file" else k): v for k, v in files.items()}
    r = requests.post(url + "/api/remove", files=rembg_files, data=fields, timeout=60)
    if "file" not in rembg_files:  # the photo is checked first
        want = "file: missing"
    elif fields or set(rembg_files) != {"file"}:  # remove.bg options rembg does not have
        want = "unknown form field"
    else:  # the case reaches rembg's photo checks as it is
        want = words.replace("image_file", "file")
    assert 400 <= r.status_code < 500 and want in r.json()["detail"], (r.status_code, r.text)
    ok = requests.post(url + "/api/remove", files={"file": ("car.jpg", PHOTO)}, timeout=60)
    assert ok.status_code == 200


def test_removebg_status_codes_and_options():
    status = dropin.removebg_status
    assert status(InputError(401, "unauthorised", "")) == status(InputError(403, "unauthorised", "")) == 403
    assert status(InputError(503, "busy", "")) == 429 and status(InputError(503, "loading", "")) == 503
    assert {status(InputError(s, "x", "")) for s in (400, 413, 415, 422)} == {400}
    opts = dropin.removebg_options({"size": "hd", "format": "auto", "bg_color": "00000080"})
    assert (opts.size, opts.format, opts.bg_color) == ("hd", "png", "00000080")  # translucent: keeps the alpha
    assert dropin.removebg_options({"format": "auto", "bg_color": "red"}).format == "jpg"
    assert dropin.removebg_options({}).size == "auto" and compose.SIZES["auto"] is None
    for fields in ({"image_url": "http://x"}, {"bg_image_url": "http://x"}, {"scale": "50%"}, {"format": "gif"}):
        with pytest.raises(InputError) as err:
            dropin.removebg_options(fields)
        assert err.value.status == 400 and next(iter(fields)) in str(err.value)
    assert dropin.rembg_options({"bgc": "1,2,3"}, None).bg_color == "010203"
    assert dropin.rembg_options({}, "0,0,0,0").bg_color == "00000000"
