"""The HTTP API: ``POST /v1/cutout``, ``GET /healthz``, ``GET /v1/model``, ``GET /metrics``, the page at ``/``,
the remove.bg and rembg drop-ins (``serve.dropin``) and ``/docs`` (served offline).

``create_app(settings)`` builds the FastAPI app; the models load in a worker thread when it starts, and
``/healthz`` answers 503 until they have. Every inference (decode, models, compositing, encoding) runs on the
bounded pool of ``limits.Gate``; a full queue is 503 + ``Retry-After``, an upload over ``--max-upload-mb`` 413, every
bad input a 4xx JSON ``{"error": {"code", "message"}}`` naming the field. With an API key (``--api-key`` or
``CARVANA_SEG_API_KEY``), ``/v1/*`` needs it in ``X-Api-Key`` (compared in constant time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from carvana_seg.serve import compose, dropin
from carvana_seg.serve.core import Core
from carvana_seg.serve.inputs import InputError
from carvana_seg.serve.limits import Gate
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
    core = Core(settings.api_key, int(settings.max_upload_mb * 1e6), int(settings.max_megapixels * 1e6), state)

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

    app = FastAPIOffline(  # /docs with Swagger UI's files from the package (fastapi-offline), not a CDN
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
        return _error(exc.status, exc.code, str(exc), exc.headers)

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
        core.authorise(request)
        return JSONResponse(core.service().describe())

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
        core.authorise(request)
        core.service()  # 503 while loading, before the upload is read
        form = await core.form(request, max_fields=len(CUTOUT_FIELDS))
        try:
            photo = await core.photo(form, "image_file", required=True)
            background = await core.photo(form, "bg_image_file")
            unknown = sorted(set(form.keys()) - set(CUTOUT_FIELDS))
            if unknown:
                raise InputError(
                    422, "unknown_field", f"unknown form field(s) {unknown}; known: {sorted(CUTOUT_FIELDS)}"
                )
            opts = compose.Options(
                format=str(form.get("format") or "png").lower(),
                channels=str(form.get("channels") or "rgba").lower(),
                bg_color=form.get("bg_color") or None,
                crop=str(form.get("crop", "")).lower() in dropin.TRUE,
                crop_margin=str(form.get("crop_margin") or "0"),
                size=str(form.get("size") or "full").lower(),
            )
            opts.validate()
        except compose.OptionError as exc:
            raise InputError(422, "bad_option", str(exc)) from exc
        finally:
            await form.close()
        out = await core.cut(photo, background, opts)
        headers = {**out.headers, "Content-Disposition": f'inline; filename="cutout.{opts.format}"'}
        return Response(out.body, media_type=out.media_type, headers=headers)

    dropin.add_routes(app, core)
    return app
