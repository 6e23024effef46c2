"""Training rounds of pseudo-labelling (config section ``pseudo_label``): which variants each round trains, which
model of each variant a round's ensemble uses, and where a round's files live.

Round one is the plain pipeline and keeps today's paths (``results/<name>/models/...``, ``oof/...``,
``test_probs.json``); round r >= 2 lives in ``results/<name>/round<r>/`` and retrains ``pseudo_label.variants``
(all when null) on each fold's training cars plus the test images pseudo-labelled from round r-1. A variant not
retrained in round r enters round r's ensemble and threshold search with the model of the last round that
trained it. The last round makes ``results/<name>/submission.csv.gz``; earlier rounds' submissions are
``submission_round<r>.csv.gz`` beside it. Pure functions of the resolved config, shared by the Snakefile and tests,
and ``round_dirs``: the one parser of a finished run's round directories (report, predict, serve).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterable
from pathlib import Path

from carvana_seg.pipeline.config import stage_config
from carvana_seg.pipeline.errors import ConfigError
from carvana_seg.settings.pseudo_label import PseudoSelection

ROUND_RE = re.compile(r"^round(\d+)$")


def last_round(config: dict) -> int:
    """The final round: ``pseudo_label.rounds`` when pseudo-labelling is enabled, else 1."""
    pl = config["pseudo_label"]
    return int(pl["rounds"]) if pl["enabled"] else 1


def retrained(config: dict) -> list[str]:
    """Variants retrained in every round >= 2, in config order."""
    names = [v["name"] for v in config["variants"]]
    chosen = config["pseudo_label"]["variants"]
    return names if chosen is None else [n for n in names if n in chosen]


def round_variants(config: dict, r: int) -> list[str]:
    """Variants trained in round ``r`` (all in round one)."""
    if not 1 <= r <= last_round(config):
        raise ConfigError(f"round {r} is not a training round (1..{last_round(config)})")
    return [v["name"] for v in config["variants"]] if r == 1 else retrained(config)


def latest_round(config: dict, variant: str, r: int) -> int:
    """The last round <= ``r`` that trained ``variant``: the model round ``r``'s ensemble uses."""
    return max(k for k in range(1, r + 1) if variant in round_variants(config, k))


def init_round(config: dict, variant: str, r: int) -> int | None:
    """The round whose model of ``variant`` (same fold) round ``r`` starts from; None: random init."""
    if r == 1:
        return None
    init = config["pseudo_label"]["init"]
    if init == "scratch":
        return None
    return 1 if init == "round1" else latest_round(config, variant, r - 1)


def train_slice(config: dict, variant: str, r: int) -> dict:
    """The ``train`` stage's config slice for ``variant`` in round ``r``: round one's unchanged; later rounds with
    ``pseudo_label.epochs``, ``pseudo_label.lr`` and ``{"pseudo": {"round", "init"}}`` (so a changed setting
    retrains that round)."""
    out = stage_config(config, "train", variant)
    if r > 1:
        pl = config["pseudo_label"]
        if pl["epochs"] is not None:
            out["variant"]["epochs"] = pl["epochs"]
        if pl["lr"] is not None:
            out["variant"]["lr"] = pl["lr"]
        out["pseudo"] = {"round": r, "init": pl["init"]}
    return out


def pseudo_slice(config: dict) -> dict:
    """The ``pseudo`` stage's slice: only the selection keys (``PseudoSelection``), so changing ``rounds`` or
    ``epochs`` never reruns it."""
    out = stage_config(config, "pseudo")
    out["pseudo_label"] = {k: copy.deepcopy(out["pseudo_label"][k]) for k in PseudoSelection.keys()}
    return out


def round_dir(res: str, r: int) -> str:
    """``results/<name>`` for round one, ``results/<name>/round<r>`` after."""
    return res if r == 1 else f"{res}/round{r}"


def round_of_dir(res: str, path: str) -> int:
    """Inverse of ``round_dir``."""
    if path == res:
        return 1
    prefix = f"{res}/round"
    if not path.startswith(prefix) or not path[len(prefix) :].isdigit():
        raise ConfigError(f"{path}: not a round directory of {res}")
    return int(path[len(prefix) :])


def suffix(config: dict, r: int) -> str:
    """File-name suffix of round ``r``'s submission and score: '' for the last round, ``_round<r>`` before it."""
    return "" if r == last_round(config) else f"_round{r}"


def round_of_suffix(config: dict, sfx: str) -> int:
    """Inverse of ``suffix``."""
    if sfx == "":
        return last_round(config)
    r = int(sfx.removeprefix("_round"))
    if not 1 <= r < last_round(config):
        raise ConfigError(f"no round {r} before the last round {last_round(config)}")
    return r


def round_dirs(results: str | Path, files: Iterable[str | Path] | None = None) -> list[tuple[int, Path]]:
    """``(round, directory)`` of a run on disk, in round order: ``results`` itself as round 1, then every
    ``results/round<r>/``. With ``files`` (a rule's declared inputs): only the round directories holding one of
    them, so a stage never globs ``results/`` for what it did not declare."""
    results = Path(results)
    if files is None:
        dirs = [d for d in results.glob("round*") if d.is_dir()]
    else:
        root = os.path.normpath(results) + os.sep
        dirs = [
            results / os.path.normpath(f)[len(root) :].split(os.sep)[0]
            for f in files
            if os.path.normpath(f).startswith(root)
        ]
    found = {(int(m[1]), d) for d in dirs if (m := ROUND_RE.match(d.name))}
    return [(1, results)] + sorted(r for r in found if r[0] != 1)
