"""The ``submit`` stage: upload a validated submission to Kaggle (never part of ``all``; run it on purpose).

Order: credentials are checked first (nothing else happens without them), then the file is validated again
against the sample submission, then ``KaggleApi.competition_submit`` uploads it with the message
``"<kaggle.message> config=<name> hash=<config hash>"`` so every leaderboard entry names the exact config.
The ``kaggle`` package authenticates when imported, so it is imported lazily (``make_api``), and tests inject
a fake API. The API key is never logged or written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from carvana_seg.core import layout
from carvana_seg.core.images import image_size
from carvana_seg.data import kaggle_source
from carvana_seg.pipeline import staging
from carvana_seg.pipeline.errors import CredentialsError, DataError
from carvana_seg.settings.build import build
from carvana_seg.settings.kaggle import Kaggle
from carvana_seg.submission.writer import validate_submission

log = logging.getLogger(__name__)
make_api = kaggle_source.make_api  # module attribute so tests can substitute a fake API


class RawShapes(Mapping):
    """``{image name: (H, W)}`` of ``raw/test/``, read lazily from the file headers."""

    def __init__(self, raw: Path) -> None:
        self.test = Path(raw) / layout.TEST_DIR
        self.cache: dict[str, tuple[int, int]] = {}

    def __getitem__(self, img: str) -> tuple[int, int]:
        if img not in self.cache:
            if not (self.test / img).is_file():
                raise KeyError(img)
            w, h = image_size(self.test / img)
            self.cache[img] = (h, w)
        return self.cache[img]

    def get(self, img: str, default: Any = None) -> Any:
        try:
            return self[img]
        except KeyError:
            return default

    def __iter__(self) -> Iterator[str]:
        return (p.name for p in sorted(self.test.glob("*.jpg")))

    def __len__(self) -> int:
        return sum(1 for _ in self.test.glob("*.jpg"))


def message_for(prefix: str, name: str, config_hash: str) -> str:
    """The submission message: the configured prefix (``kaggle.message``), the config name and its hash."""
    return f"{prefix} config={name} hash={config_hash}"


def check_credentials() -> str:
    """Where the credentials come from; CredentialsError saying what to set when there are none."""
    try:
        return kaggle_source.check_credentials()
    except CredentialsError as exc:
        raise CredentialsError(f"cannot submit to Kaggle: {exc}; nothing was uploaded") from None


def submit(submission: Path, competition: str, message: str, raw: Path, api: Any = None) -> dict:
    """Check credentials, validate ``submission`` against ``raw``'s sample submission, upload; return a record."""
    source = check_credentials()
    if not submission.is_file():
        raise DataError(f"{submission}: submission file not found")
    n = validate_submission(submission, raw / layout.SAMPLE_SUBMISSION_CSV, RawShapes(raw))
    api = api if api is not None else make_api()
    log.info("uploading %s (%d images) to '%s' with credentials from %s", submission, n, competition, source)
    try:
        response = api.competition_submit(str(submission), message, competition)
    except Exception as exc:  # noqa: BLE001 - translated into one scrubbed line
        raise kaggle_source._api_error(exc, competition, str(submission), upload=True) from None  # noqa: SLF001
    return {
        "competition": competition,
        "submission": str(submission),
        "sha256": hashlib.sha256(submission.read_bytes()).hexdigest(),
        "n_images": n,
        "message": message,
        "submitted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "response": kaggle_source.scrub(str(response)),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--submission", required=True, help="validated submission (results/<name>/submission.csv.gz)")
    parser.add_argument("--competition", required=True, help="Kaggle competition slug")
    parser.add_argument("--config-hash", required=True, help="hash of the full config, put in the message")
    parser.add_argument("--raw", required=True, help="raw Kaggle layout (sample_submission.csv and test/ sizes)")
    parser.add_argument("--out", required=True, help="JSON record of the upload")


def run(args: argparse.Namespace, cfg: dict) -> None:
    kaggle = build(Kaggle, cfg["kaggle"])
    record = submit(
        Path(args.submission),
        args.competition,
        message_for(kaggle.message, cfg["name"], args.config_hash),
        Path(args.raw),
    )
    staging.write_text(Path(args.out), json.dumps(record, indent=2) + "\n")
    log.info("submitted to %s: %s", args.competition, record["message"])
