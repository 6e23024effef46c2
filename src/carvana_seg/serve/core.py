"""What every cut-out endpoint shares (``/v1/cutout`` and the remove.bg and rembg drop-ins): the API key check, the
loaded models, the form reader with its limits, and one photo's cut-out on the bounded inference pool.

Each step raises ``InputError`` (status, code, message, headers) instead of answering, so that every endpoint gives
the same decision for the same request and renders it in its own clients' error format.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from carvana_seg.core.images import decode_image
from carvana_seg.core.masks import binarize
from carvana_seg.inference import confidence
from carvana_seg.pipeline.errors import DataError
from carvana_seg.serve import compose
from carvana_seg.serve.inputs import InputError, as_input_error, from_b64, probe
from carvana_seg.serve.limits import Busy, Gate


@dataclass
class Cutout:
    """One answer: the encoded file, its media type, and the headers every endpoint sends."""

    body: bytes
    media_type: str
    width: int
    height: int
    headers: dict[str, str] = field(default_factory=dict)
    confidence: float | None = None  # predicted Dice (inference.confidence)


def declared_length_within(request: Request, limit: int, message: Callable[[int], str]) -> None:
    """413 (``too_large``) before reading a byte when the request's Content-Length is above ``limit``."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise InputError(413, "too_large", message(int(length)))


@dataclass
class Core:
    """The shared steps of one server (``serve.app.create_app`` builds it; ``state`` is filled as it starts)."""

    api_key: str | None
    max_bytes: int
    max_pixels: int
    state: dict

    def authorise(self, request: Request) -> None:
        """With an API key, ``X-Api-Key`` must match (constant-time); 401 without it, 403 when it differs."""
        if not self.api_key:
            return
        given = request.headers.get("x-api-key", "")
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise InputError(
                401 if not given else 403,
                "unauthorised",
                "X-Api-Key header missing" if not given else "X-Api-Key does not match",
            )

    def service(self):
        """The loaded ensemble (``inference.service.Service``); 503 + Retry-After while loading or after a failure."""
        if self.state["service"] is None:
            raise InputError(
                503,
                "loading" if self.state["error"] is None else "failed",
                self.state["error"] or "the models are still loading; retry shortly",
                {"Retry-After": "2"},
            )
        return self.state["service"]

    async def form(self, request: Request, max_fields: int) -> FormData:
        """The request's form (multipart or urlencoded) within the upload limit: 413 above it, 400 when malformed."""
        declared_length_within(
            request,
            2 * self.max_bytes + 65536,
            lambda n: (
                f"request of {n / 1e6:.1f} MB, above the upload limit of "
                f"{self.max_bytes / 1e6:g} MB per file (--max-upload-mb)"
            ),
        )
        try:
            return await request.form(max_files=2, max_fields=max_fields, max_part_size=4 * self.max_bytes // 3 + 4096)
        except StarletteHTTPException as exc:  # the multipart parser's refusals
            too_big = "maximum size" in str(exc.detail).lower()
            raise InputError(
                413 if too_big else 400, "too_large" if too_big else "bad_form", f"request body: {exc.detail}"
            ) from exc

    async def body(self, request: Request) -> bytes:
        """A raw (JSON) body, read in chunks up to the base64 of one upload: 413 beyond, never buffered whole."""
        limit = 4 * self.max_bytes // 3 + 65536

        def message(_: int) -> str:
            return f"request body above {limit / 1e6:.1f} MB: the upload limit (--max-upload-mb) in base64"

        declared_length_within(request, limit, message)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise InputError(413, "too_large", message(size))
            chunks.append(chunk)
        return b"".join(chunks)

    async def photo(self, form, name: str, required: bool = False, b64_name: str | None = None) -> bytes | None:
        """A photo field's bytes: the file upload ``name`` or its base64 text ``b64_name`` (default ``<name>_b64``;
        ``""``: the endpoint takes files only)."""
        b64_name = f"{name}_b64" if b64_name is None else b64_name
        value, b64 = form.get(name), (form.get(b64_name) if b64_name else None)
        if isinstance(value, UploadFile):
            data = await value.read(self.max_bytes + 1)
            if len(data) > self.max_bytes:
                raise InputError(
                    413,
                    "too_large",
                    f"{name}: more than the upload limit of {self.max_bytes / 1e6:g} MB (--max-upload-mb)",
                )
            return data
        if isinstance(value, str) and value:
            hint = f"; send base64 text as {b64_name}" if b64_name else ""
            raise InputError(422, "not_a_file", f"{name}: must be a file upload (multipart), got a text field{hint}")
        if isinstance(b64, str) and b64:
            return from_b64(b64_name, b64, self.max_bytes)
        if required:
            hint = f" (or base64 as {b64_name})" if b64_name else ""
            raise InputError(422, "missing", f"{name}: missing; send the photo as multipart field {name}{hint}")
        return None

    async def cut(
        self, photo: bytes, background: bytes | None, opts: compose.Options, name: str = "image_file"
    ) -> Cutout:
        """One photo's cut-out on the bounded pool (``name``: the photo's field, for messages); 503 + Retry-After
        when the queue is full."""
        service = self.service()
        gate: Gate = self.state["gate"]
        t_in = time.perf_counter()
        try:
            async with gate.slot():
                t_start = time.perf_counter()
                body, (w, h), sure, timing = await gate.run(
                    _cut, service, photo, background, opts, self.max_pixels, name
                )
        except Busy as exc:
            raise InputError(
                503,
                "busy",
                f"{gate.running} inferences running and {gate.waiting} queued (--concurrency "
                f"{gate.concurrency}, queue {gate.queue}); retry after {exc.retry_after} s",
                {"Retry-After": str(exc.retry_after)},
            ) from exc
        info = service.info
        timing = {"queue": t_start - t_in, **timing}
        headers = {
            "X-Width": str(w),
            "X-Height": str(h),
            "X-Threshold": f"{info.threshold:.6f}",
            "X-Run": info.name,
            "X-Config-Hash": info.config_hash or "",
            "X-Confidence": f"{sure:.4f}",  # predicted Dice of this photo's mask (inference.confidence)
            "Server-Timing": ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in timing.items()),
        }
        return Cutout(body, compose.MEDIA_TYPES[opts.format], w, h, headers, sure)


def _cut(
    service, photo: bytes, background: bytes | None, opts: compose.Options, max_pixels: int, name: str
) -> tuple[bytes, tuple[int, int], float, dict[str, float]]:
    """Check, predict, composite and encode one photo (runs on the inference pool); also its confidence."""
    t0 = time.perf_counter()
    probe(name, photo, max_pixels)
    bg = None
    if background is not None:
        probe("bg_image_file", background, max_pixels, allow_alpha=True)
        try:
            bg = decode_image(background, 1, "bg_image_file")
        except DataError as exc:
            raise as_input_error("bg_image_file", exc) from exc
    try:
        rgb, u8 = service.prob(photo, name)
    except InputError:
        raise
    except DataError as exc:
        raise as_input_error(name, exc) from exc
    except (cv2.error, ValueError) as exc:  # a header that passed but pixels OpenCV cannot use: still the input's
        first = (str(exc).strip().splitlines() or [""])[-1][:160]
        raise InputError(422, "unprocessable", f"{name}: cannot be processed ({type(exc).__name__}: {first})") from exc
    t1 = time.perf_counter()
    mask = binarize(u8, service.info.threshold)
    sure = round(confidence.predicted_dice(u8, mask), 4)
    extra = {"threshold": service.info.threshold, "run": service.info.name, "confidence": sure}
    body, wh = compose.encode(rgb, mask, opts, bg, extra)
    return body, wh, sure, {"infer": t1 - t0, "encode": time.perf_counter() - t1}
