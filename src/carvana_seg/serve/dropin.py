"""Drop-in endpoints for existing background-removal clients, on the same inference path and limits as
``/v1/cutout`` (``serve.core``):

- ``POST /v1.0/removebg``: the remove.bg API. Its request fields (multipart, urlencoded or JSON), ``X-Api-Key``
  (checked when the server has a key, accepted otherwise), its answer (the image bytes, ``X-Width``/``X-Height``,
  or ``{"data": {"result_b64"}}`` for ``Accept: application/json``) and its errors
  ``{"errors": [{"title", "code", "detail"}]}`` with its status codes (400 for any bad input, 403 for the key, 429
  when the queue is full). Fields about other kinds of subject or shadows (``type``, ``add_shadow``, ...) are
  accepted and ignored; ``roi``, ``scale`` and ``position`` only at their defaults (400 otherwise).
- ``POST /api/remove``: rembg's server. Multipart ``file``; ``om`` (only the mask), ``bgc`` (``r,g,b[,a]``, form or
  query); a PNG answer. rembg's model names and alpha-matting settings are accepted and ignored: the run's ensemble
  always answers (``X-Run`` names it).

No endpoint fetches a URL: ``image_url``, ``bg_image_url`` and rembg's ``GET /api/remove?url=`` get a 400, so the
server can never be made to request an address (SSRF).
"""

from __future__ import annotations

import base64
import json

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from carvana_seg.serve import compose
from carvana_seg.serve.core import Core
from carvana_seg.serve.inputs import InputError, from_b64

REMOVEBG_FIELDS = {
    "image_file": "the photo (multipart file)",
    "image_file_b64": "the photo, base64",
    "image_url": "refused (400): this server fetches no URL",
    "size": f"one of {', '.join(compose.SIZES)} (regular: 0.25 MP, medium 1.5 MP, hd 4 MP, auto/full/4k: the photo's)",
    "format": "auto (png, or jpg on an opaque background), png, jpg, zip",
    "channels": "rgba or alpha",
    "bg_color": "hex (81d4fa, fff, 00000080) or a colour name",
    "bg_image_file": "background picture (multipart file), scaled to cover",
    "bg_image_url": "refused (400): this server fetches no URL",
    "crop": "true: crop to the car",
    "crop_margin": "px (30, 30px) or % (10%)",
    "roi": "0% 0% 100% 100% only",
    "scale": "original only",
    "position": "original only",
    "type": "ignored (always a car)",
    "type_level": "ignored",
    "semitransparency": "ignored",
    "add_shadow": "ignored",
    "shadow_type": "ignored",
    "shadow_opacity": "ignored",
}
URL_FIELDS = ("image_url", "bg_image_url")
DEFAULT_ONLY = {"roi": ("0% 0% 100% 100%",), "scale": ("original",), "position": ("original",)}
REMBG_FIELDS = ("file", "model", "a", "af", "ab", "ae", "om", "ppm", "dc", "vm", "bgc", "extras")
TRUE = ("1", "true", "on", "yes")


def removebg_status(exc: InputError) -> int:
    """remove.bg's status for one of our refusals: 403 for the key, 429 when busy, 503 loading, else 400."""
    if exc.status in (401, 403):
        return 403
    if exc.code == "busy":
        return 429
    return exc.status if exc.status >= 500 else 400


def removebg_error(exc: InputError) -> JSONResponse:
    return JSONResponse(
        {"errors": [{"title": str(exc), "code": exc.code, "detail": str(exc)}]},
        status_code=removebg_status(exc),
        headers=exc.headers,
    )


def removebg_options(fields: dict) -> compose.Options:
    """remove.bg's fields as our render options (the photo fields aside); ``InputError`` 400 naming the field."""
    unknown = sorted(set(fields) - set(REMOVEBG_FIELDS))
    if unknown:
        raise InputError(400, "unknown_parameter", f"unknown parameter(s) {unknown}; known: {sorted(REMOVEBG_FIELDS)}")
    for name in URL_FIELDS:
        if fields.get(name):
            raise InputError(
                400, "url_not_fetched", f"{name}: this server fetches no URL; upload the file or send it as base64"
            )
    for name, allowed in DEFAULT_ONLY.items():
        if fields.get(name) and str(fields[name]).strip().lower() not in allowed:
            raise InputError(400, "unsupported", f"{name}: only {allowed[0]!r} is supported, got {fields[name]!r}")
    bg_color = str(fields.get("bg_color") or "").strip() or None
    fmt = str(fields.get("format") or "auto").lower()
    if fmt not in ("auto", "png", "jpg", "jpeg", "zip"):
        raise InputError(400, "bad_option", f"format: must be one of auto, png, jpg, zip, got {fmt!r}")
    if fmt == "auto":  # remove.bg: PNG when the answer has transparency, else JPG
        rgba = compose.parse_color(bg_color)
        opaque = fields.get("bg_image_file") is not None or (rgba is not None and rgba[3] == 255)
        fmt = "jpg" if opaque and str(fields.get("channels") or "rgba").lower() == "rgba" else "png"
    return compose.Options(
        format="jpg" if fmt == "jpeg" else fmt,
        channels=str(fields.get("channels") or "rgba").lower(),
        bg_color=bg_color,
        crop=str(fields.get("crop", "")).lower() in TRUE,
        crop_margin=str(fields.get("crop_margin") or "0"),
        size=str(fields.get("size") or "auto").lower(),
    ).validate()


def rembg_options(fields: dict, query_bgc: str | None) -> compose.Options:
    """rembg's fields as our render options: ``om`` the mask alone, ``bgc`` ``r,g,b[,a]`` a background colour."""
    unknown = sorted(set(fields) - set(REMBG_FIELDS))
    if unknown:
        raise InputError(422, "unknown_field", f"unknown form field(s) {unknown}; known: {list(REMBG_FIELDS)}")
    bgc = str(fields.get("bgc") or query_bgc or "").strip()
    color = None
    if bgc:
        parts = [p.strip() for p in bgc.split(",")]
        if len(parts) not in (3, 4) or not all(p.isascii() and p.isdecimal() and int(p) <= 255 for p in parts):
            raise InputError(422, "bad_option", f"bgc: expected r,g,b or r,g,b,a with values 0-255, got {bgc!r}")
        color = "".join(f"{int(p):02x}" for p in parts)
    only_mask = str(fields.get("om", "")).lower() in TRUE
    return compose.Options(format="png", channels="alpha" if only_mask else "rgba", bg_color=color).validate()


async def _removebg_fields(core: Core, request: Request) -> tuple[dict, bytes, bytes | None, object | None]:
    """The request's fields, photo and background, from a JSON body or a form; the form (to close) or None."""
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            fields = json.loads(await core.body(request))
        except ValueError as exc:
            raise InputError(400, "bad_json", f"request body: not valid JSON ({exc})") from exc
        if not isinstance(fields, dict):
            raise InputError(400, "bad_json", "request body: expected a JSON object of remove.bg's parameters")
        b64 = fields.get("image_file_b64")
        if not isinstance(b64, str) or not b64:
            if fields.get("image_url"):
                removebg_options(fields)  # the URL refusal
            raise InputError(400, "missing", "image_file_b64: missing; a JSON request sends the photo as base64")
        return fields, from_b64("image_file_b64", b64, core.max_bytes), None, None
    form = await core.form(request, max_fields=len(REMOVEBG_FIELDS))
    try:
        fields = dict(form.items())
        if any(fields.get(n) for n in URL_FIELDS):
            removebg_options(fields)
        photo = await core.photo(form, "image_file", required=True)
        background = await core.photo(form, "bg_image_file", b64_name="")  # remove.bg has no bg_image_file_b64
    except BaseException:
        await form.close()
        raise
    return fields, photo, background, form


def add_routes(app: FastAPI, core: Core) -> None:
    """Register ``POST /v1.0/removebg`` and ``/api/remove`` (and the refusing ``GET /api/remove``) on ``app``."""

    @app.post("/v1.0/removebg", summary="remove.bg-compatible cut-out (drop-in for remove.bg clients)")
    async def removebg(request: Request) -> Response:
        form = None
        try:
            core.authorise(request)
            core.service()
            fields, photo, background, form = await _removebg_fields(core, request)
            opts = removebg_options(fields)
            out = await core.cut(photo, background, opts)
        except compose.OptionError as exc:
            return removebg_error(InputError(400, "bad_option", str(exc)))
        except InputError as exc:
            return removebg_error(exc)
        finally:
            if form is not None:
                await form.close()
        headers = {**out.headers, "X-Type": "car", "X-Credits-Charged": "0"}
        if "application/json" in request.headers.get("accept", ""):
            data = {
                "result_b64": base64.b64encode(out.body).decode(),
                "width": out.width,
                "height": out.height,
                "confidence": out.confidence,
            }
            return JSONResponse({"data": data}, headers=headers)
        return Response(out.body, media_type=out.media_type, headers=headers)

    @app.post("/api/remove", summary="rembg-server-compatible cut-out (multipart file; om, bgc)")
    async def rembg(request: Request) -> Response:
        form = None
        try:
            core.authorise(request)
            core.service()
            form = await core.form(request, max_fields=len(REMBG_FIELDS))
            photo = await core.photo(form, "file", required=True, b64_name="")  # rembg takes files only
            opts = rembg_options(dict(form.items()), request.query_params.get("bgc"))
            out = await core.cut(photo, None, opts, name="file")
        except compose.OptionError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=422)
        except InputError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=exc.status, headers=exc.headers)
        finally:
            if form is not None:
                await form.close()
        return Response(out.body, media_type="image/png", headers=out.headers)

    @app.get("/api/remove", summary="refused: this server fetches no URL (rembg's GET ?url=)")
    async def rembg_get() -> JSONResponse:
        return JSONResponse(
            {"detail": "this server fetches no URL; POST the photo as multipart field file"}, status_code=400
        )
