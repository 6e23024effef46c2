"""``python -m carvana_seg serve --models results/<name>``: the cut-out API and page of a run's final ensemble.

Binds 127.0.0.1:8000 by default (``--host 0.0.0.0`` to listen on every interface: then set an API key). The models
load in the background; ``GET /healthz`` turns 200 when they are ready. See docs/serve.md.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from carvana_seg.pipeline.errors import CarvanaSegError

log = logging.getLogger(__name__)
API_KEY_ENV = "CARVANA_SEG_API_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models",
        required=True,
        help="results directory results/<name>/ (its final ensemble), or a bundle file of one (carvana_seg bundle)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "onnx"],
        help="auto (default: onnx on a CPU, torch on CUDA, the faster measured), torch (the "
        "submission's exact masks) or onnx (ONNX Runtime, within one uint8 level)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=None, help="inferences at once (default: 2 on a GPU, 1 per 4 CPU cores)"
    )
    parser.add_argument("--queue", type=int, default=8, help="requests that may wait; beyond: 503 + Retry-After")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: cores / concurrency)")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload per file (413 above)")
    parser.add_argument(
        "--max-megapixels",
        type=float,
        default=40.0,
        help="largest photo in megapixels, checked on the header (decompression bombs: 413)",
    )
    parser.add_argument(
        "--api-key", default=None, help=f"require this X-Api-Key on /v1/* (default: ${API_KEY_ENV}; unset: no key)"
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace, cfg: dict) -> None:
    import torch
    import uvicorn

    from carvana_seg.inference import provenance
    from carvana_seg.inference.service import read_run
    from carvana_seg.serve.app import Settings, create_app
    from carvana_seg.serve.limits import default_concurrency

    for name in ("concurrency", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise CarvanaSegError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.queue < 0 or args.max_upload_mb <= 0 or args.max_megapixels <= 0:
        raise CarvanaSegError("--queue must be >= 0 and --max-upload-mb, --max-megapixels > 0")
    info = read_run(Path(args.models))  # a wrong --models fails here, in one line, before the server starts
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    cuda = args.device != "cpu" and torch.cuda.is_available() and args.backend != "onnx"
    concurrency = args.concurrency or default_concurrency("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // concurrency))
    settings = Settings(
        models=Path(args.models),
        device=args.device,
        backend=args.backend,
        concurrency=concurrency,
        queue=args.queue,
        max_upload_mb=args.max_upload_mb,
        max_megapixels=args.max_megapixels,
        api_key=api_key,
    )
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        log.warning("listening on %s without an API key: anyone who reaches it can use it", args.host)
    trained_on = info.trained_on or provenance.trained_on(info.results)  # a bundle carries its own
    log.info(
        "serving run %s (%s), trained on %s, on http://%s:%d",
        info.name,
        info.round_dir,
        provenance.describe(trained_on, info.oof_dice),
        args.host,
        args.port,
    )
    if trained_on["notice"]:
        log.warning("%s", trained_on["notice"])
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level, access_log=False)
