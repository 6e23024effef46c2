"""The HTTP API: ``POST /v1/cutout``, ``GET /healthz``, ``GET /v1/model``, ``GET /metrics``, the page at ``/``.

``create_app(settings)`` builds the FastAPI app; the models load in a worker thread when it starts, and
``/healthz`` answers 503 until they have. Every inference (decode, models, compositing, encoding) runs on the
bounded pool of ``limits.Gate``; a full queue is 503 + ``Retry-After``, an upload over ``--max-upload-mb`` 413, every
bad input a 4xx JSON ``{"error": {"code", "message"}}`` naming the field. With an API key (``--api-key`` or
``CARVANA_SEG_API_KEY``), ``/v1/*`` needs it in ``X-Api-Key`` (compared in constant time).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from carvana_seg.core.images import decode_image
from carvana_seg.core.masks import binarize
from carvana_seg.pipeline.errors import DataError
from carvana_seg.serve import compose
from carvana_seg.serve.inputs import InputError, as_input_error, from_b64, probe
from carvana_seg.serve.limits import Busy, Gate
from carvana_seg.serve.metrics import Metrics

log = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("static")
CUTOUT_FIELDS = {
    "image_file": {
        "type": "string",
        "format": "binary",
        "description": "the photo (JPEG, PNG; EXIF orientation honoured)",
    },
    "image_file_b64": {"type": "string", "description": "the photo, base64 (instead of image_file)"},
    "format": {"type": "string", "enum": list(compose.FORMATS), "default": "png"},
    "channels": {"type": "string", "enum": list(compose.CHANNELS), "default": "rgba"},
    "bg_color": {"type": "string", "description": "background colour: hex (81d4fa, #fff, 00000080) or a name"},
    "bg_image_file": {"type": "string", "format": "binary", "description": "background picture, scaled to cover"},
    "crop": {"type": "boolean", "default": False, "description": "crop to the car"},
    "crop_margin": {"type": "string", "default": "0", "description": "margin of the crop: px (30) or % (10%)"},
    "size": {"type": "string", "enum": list(compose.SIZES), "default": "full", "description": "preview: <= 0.25 MP"},
}


@dataclass(frozen=True)
class Settings:
    """How the server runs (``serve`` command line)."""

    models: Path
    device: str = "auto"
    backend: str = "auto"
    concurrency: int | None = None
    queue: int = 8
    max_upload_mb: float = 20.0
    max_megapixels: float = 40.0
    api_key: str | None = None


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def create_app(settings: Settings) -> FastAPI:
    """The app of one results directory (see the module docstring)."""
    state: dict = {"service": None, "error": None, "gate": None}
    metrics = Metrics()
    max_bytes = int(settings.max_upload_mb * 1e6)
    max_pixels = int(settings.max_megapixels * 1e6)

    def load() -> None:
        from carvana_seg.inference.service import Service

        try:
            state["service"] = Service(settings.models, settings.device, settings.backend)
            metrics.ready.set(1)
        except Exception as exc:  # reported by /healthz; the process keeps answering it
            log.exception("loading %s failed", settings.models)
            state["error"] = f"{type(exc).__name__}: {exc}"

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        from carvana_seg.models.runtime import pick_device
        from carvana_seg.serve.limits import default_concurrency

        device = pick_device(settings.device) if settings.backend != "onnx" else None
        n = settings.concurrency or default_concurrency(device.type if device else "cpu")
        state["gate"] = Gate(n, settings.queue)
        log.info(
            "concurrency %d, queue %d, upload limit %.1f MB, pixel limit %.1f MP%s",
            n,
            settings.queue,
            settings.max_upload_mb,
            settings.max_megapixels,
            ", API key required" if settings.api_key else "",
        )
        asyncio.get_running_loop().run_in_executor(None, load)
        yield
        state["gate"].close()

    app = FastAPI(
        title="carvana-seg cut-out API",
        version="1",
        lifespan=lifespan,
        description="Background removal with the trained Carvana ensemble of one results directory.",
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.middleware("http")
    async def observe(request: Request, call_next):
        t0 = time.perf_counter()
        path = request.url.path if request.url.path in metrics.paths else "other"
        metrics.in_flight.inc()
        try:
            response = await call_next(request)
        finally:
            metrics.in_flight.dec()
        metrics.requests.labels(path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - t0)
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "http", str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(InputError)
    async def input_error(_request: Request, exc: InputError) -> JSONResponse:
        return _error(exc.status, exc.code, str(exc))

    def authorised(request: Request) -> JSONResponse | None:
        if not settings.api_key:
            return None
        given = request.headers.get("x-api-key", "")
        if hmac.compare_digest(given.encode(), settings.api_key.encode()):
            return None
        return _error(
            401 if not given else 403,
            "unauthorised",
            "X-Api-Key header missing" if not given else "X-Api-Key does not match",
        )

    def service_or_error():
        if state["service"] is None:
            return None, _error(
                503,
                "loading" if state["error"] is None else "failed",
                state["error"] or "the models are still loading; retry shortly",
                {"Retry-After": "2"},
            )
        return state["service"], None

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/healthz", summary="ready once the models are loaded (503 before)")
    async def healthz() -> JSONResponse:
        if state["service"] is None:
            return _error(503, "loading" if state["error"] is None else "failed", state["error"] or "loading models")
        return JSONResponse({"status": "ok", "run": state["service"].info.name})

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        gate = state["gate"]
        metrics.queued.set(gate.waiting if gate else 0)
        body, media = metrics.render()
        return Response(body, media_type=media)

    @app.get("/v1/model", summary="the served ensemble: variants, folds, threshold, OOF Dice, device")
    async def model(request: Request) -> JSONResponse:
        if (denied := authorised(request)) is not None:
            return denied
        service, err = service_or_error()
        return err or JSONResponse(service.describe())

    @app.post(
        "/v1/cutout",
        summary="cut the car out of a photo",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"multipart/form-data": {"schema": {"type": "object", "properties": CUTOUT_FIELDS}}},
            }
        },
    )
    async def cutout(request: Request) -> Response:
        if (denied := authorised(request)) is not None:
            return denied
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > 2 * max_bytes + 65536:
            return _error(
                413,
                "too_large",
                f"request of {int(length) / 1e6:.1f} MB, above the upload limit of "
                f"{settings.max_upload_mb:g} MB per file (--max-upload-mb)",
            )
        service, err = service_or_error()
        if err is not None:
            return err
        try:
            form = await request.form(
                max_files=2, max_fields=len(CUTOUT_FIELDS), max_part_size=4 * max_bytes // 3 + 4096
            )
        except StarletteHTTPException as exc:  # the multipart parser's refusals
            too_big = "maximum size" in str(exc.detail).lower()
            raise InputError(
                413 if too_big else 400, "too_large" if too_big else "bad_form", f"request body: {exc.detail}"
            ) from exc
        try:
            photo = await _field_bytes(form, "image_file", max_bytes, required=True)
            background = await _field_bytes(form, "bg_image_file", max_bytes)
            unknown = sorted(set(form.keys()) - set(CUTOUT_FIELDS))
            if unknown:
                raise InputError(
                    422, "unknown_field", f"unknown form field(s) {unknown}; known: {sorted(CUTOUT_FIELDS)}"
                )
            opts = compose.Options(
                format=str(form.get("format") or "png").lower(),
                channels=str(form.get("channels") or "rgba").lower(),
                bg_color=form.get("bg_color") or None,
                crop=str(form.get("crop", "")).lower() in ("1", "true", "on"),
                crop_margin=str(form.get("crop_margin") or "0"),
                size=str(form.get("size") or "full").lower(),
            )
            opts.validate()
        except compose.OptionError as exc:
            raise InputError(422, "bad_option", str(exc)) from exc
        finally:
            await form.close()
        gate: Gate = state["gate"]
        t_in = time.perf_counter()
        try:
            async with gate.slot():
                t_start = time.perf_counter()
                body, (w, h), timing = await gate.run(_cut, service, photo, background, opts, max_pixels)
        except Busy as exc:
            return _error(
                503,
                "busy",
                f"{gate.running} inferences running and {gate.waiting} queued (--concurrency "
                f"{gate.concurrency}, queue {gate.queue}); retry after {exc.retry_after} s",
                {"Retry-After": str(exc.retry_after)},
            )
        info = service.info
        timing = {"queue": t_start - t_in, **timing}
        headers = {
            "X-Width": str(w),
            "X-Height": str(h),
            "X-Threshold": f"{info.threshold:.6f}",
            "X-Run": info.name,
            "X-Config-Hash": info.config_hash or "",
            "Server-Timing": ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in timing.items()),
            "Content-Disposition": f'inline; filename="cutout.{opts.format}"',
        }
        return Response(body, media_type=compose.MEDIA_TYPES[opts.format], headers=headers)

    return app


async def _field_bytes(form, name: str, max_bytes: int, required: bool = False) -> bytes | None:
    """A photo field's bytes: the file upload ``name`` or its ``<name>_b64`` text; 413 above ``max_bytes``."""
    value, b64 = form.get(name), form.get(f"{name}_b64")
    if isinstance(value, UploadFile):
        data = await value.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise InputError(
                413, "too_large", f"{name}: more than the upload limit of {max_bytes / 1e6:g} MB (--max-upload-mb)"
            )
        return data
    if isinstance(value, str) and value:
        raise InputError(
            422,
            "not_a_file",
            f"{name}: must be a file upload (multipart), got a text field; send base64 text as {name}_b64",
        )
    if isinstance(b64, str) and b64:
        return from_b64(f"{name}_b64", b64, max_bytes)
    if required:
        raise InputError(
            422, "missing", f"{name}: missing; send the photo as multipart field {name} (or base64 as {name}_b64)"
        )
    return None


def _cut(
    service, photo: bytes, background: bytes | None, opts: compose.Options, max_pixels: int
) -> tuple[bytes, tuple[int, int], dict[str, float]]:
    """Check, predict, composite and encode one photo (runs on the inference pool)."""
    t0 = time.perf_counter()
    probe("image_file", photo, max_pixels)
    bg = None
    if background is not None:
        probe("bg_image_file", background, max_pixels, allow_alpha=True)
        try:
            bg = decode_image(background, 1, "bg_image_file")
        except DataError as exc:
            raise as_input_error("bg_image_file", exc) from exc
    try:
        rgb, u8 = service.prob(photo, "image_file")
    except InputError:
        raise
    except DataError as exc:
        raise as_input_error("image_file", exc) from exc
    except (cv2.error, ValueError) as exc:  # a header that passed but pixels OpenCV cannot use: still the input's
        first = (str(exc).strip().splitlines() or [""])[-1][:160]
        raise InputError(
            422, "unprocessable", f"image_file: cannot be processed ({type(exc).__name__}: {first})"
        ) from exc
    t1 = time.perf_counter()
    mask = binarize(u8, service.info.threshold)
    extra = {"threshold": service.info.threshold, "run": service.info.name}
    body, wh = compose.encode(rgb, mask, opts, bg, extra)
    return body, wh, {"infer": t1 - t0, "encode": time.perf_counter() - t1}
