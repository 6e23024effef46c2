"""Loading, validating and slicing the pipeline configuration.

The schema in ``workflow/schemas/config.schema.yaml`` is the single source of types, ranges and defaults: the
Snakefile validates with it (snakemake's ``validate``) and so does this module for direct CLI use. Each stage
receives only the *slice* of the config it reads (``stage_config``); Snakemake stores that slice as a rule
param, so changing a setting reruns exactly the stages that read it.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from carvana_seg.pipeline.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[3]
SCHEMA_PATH = PROJECT_ROOT / "workflow" / "schemas" / "config.schema.yaml"

# Which top-level sections each stage reads. A stage never reads a key outside its slice.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "fetch": ("name", "data"),
    "validate": ("name", "data"),  # data.partial, data.strict
    "folds": ("name", "folds"),
    "resize": ("name", "resize"),
    "train": ("name", "seed", "train"),
    "oof": ("name", "predict"),
    "threshold": ("name", "threshold", "variants", "folds"),
    "ensemble": ("name", "predict", "variants", "folds"),
    "outliers": ("name", "outliers", "variants", "predict"),  # variants, predict: for repredict: zoom
    "pseudo": ("name", "pseudo_label"),
    "submission": ("name",),
    "submit": ("name", "kaggle"),
}


def _schema() -> dict:
    with open(SCHEMA_PATH) as fh:
        return yaml.safe_load(fh)


def _defaulting_validator(schema: dict):
    """A Draft 2020-12 validator (the draft snakemake uses) that fills in ``default`` values, recursively, as it
    validates."""
    from jsonschema import Draft202012Validator, validators

    def set_defaults(validator, properties, instance, schema_):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from Draft202012Validator.VALIDATORS["properties"](validator, properties, instance, schema_)

    cls = validators.extend(Draft202012Validator, {"properties": set_defaults})
    return cls(schema)


def resolve(config: dict) -> dict:
    """Validate a config dict against the schema and fill in every default; raise ConfigError naming the key."""
    resolved = copy.deepcopy(config)
    validator = _defaulting_validator(_schema())
    # Two passes: defaults inserted in the first (e.g. empty sections) get their own defaults in the second.
    for _ in range(2):
        errors = sorted(validator.iter_errors(resolved), key=lambda e: list(e.absolute_path))
        if errors:
            err = errors[0]
            key = ".".join(str(p) for p in err.absolute_path) or "<top level>"
            raise ConfigError(f"config key '{key}': {err.message}")
    names = [v["name"] for v in resolved["variants"]]
    if len(set(names)) != len(names):
        raise ConfigError(f"config key 'variants': duplicate variant names {names}")
    if resolved["outliers"]["uncertain_lo"] >= resolved["outliers"]["uncertain_hi"]:
        raise ConfigError("config key 'outliers.uncertain_lo': must be below outliers.uncertain_hi")
    pl = resolved["pseudo_label"]
    if pl["confidence_lo"] >= pl["confidence_hi"]:
        raise ConfigError("config key 'pseudo_label.confidence_lo': must be below pseudo_label.confidence_hi")
    unknown = [v for v in pl["variants"] or [] if v not in names]
    if unknown:
        raise ConfigError(f"config key 'pseudo_label.variants': no variant(s) {unknown} (have {names})")
    if resolved["data"]["source"] == "local" and not resolved["data"]["path"]:
        raise ConfigError("config key 'data.path': required when data.source is 'local'")
    return resolved


def weight_total(weights: Sequence[float]) -> float:
    """The sum of the ensemble weights, which every weighted mean divides by (the OOF threshold search here, the
    test ensemble on the CPU and on the device); one clear error when it is not positive."""
    total = float(sum(weights))
    if total <= 0:
        raise ConfigError("config key 'variants.weight': the ensemble weights sum to 0")
    return total


def load(path: str | Path) -> dict:
    """Read a YAML config file and resolve it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path) as fh:
        raw = yaml.safe_load(fh) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: config must be a mapping")
    return resolve(raw)


def variant(config: dict, name: str) -> dict:
    """The variant entry called ``name``."""
    for v in config["variants"]:
        if v["name"] == name:
            return v
    raise ConfigError(
        f"config key 'variants': no variant named '{name}' (have {[v['name'] for v in config['variants']]})"
    )


def fold_ids(config: dict) -> list[int]:
    """The folds that are trained: ``folds.use`` or all of ``range(folds.k)``."""
    return trained_folds(config["folds"]["k"], config["folds"]["use"])


def trained_folds(k: int, use: Sequence[int] | None) -> list[int]:
    """``use`` (sorted, each below ``k``) or all of ``range(k)``: the folds trained (``folds.k``, ``folds.use``)."""
    if use is None:
        return list(range(k))
    bad = [f for f in use if f >= k]
    if bad:
        raise ConfigError(f"config key 'folds.use': folds {bad} not below folds.k={k}")
    return sorted(set(use))


def stage_config(config: dict, stage: str, variant_name: str | None = None) -> dict:
    """The slice of a resolved config that ``stage`` reads (plus the one variant, for per-variant stages)."""
    if stage not in STAGE_SECTIONS:
        raise ConfigError(f"unknown stage '{stage}'")
    out = {k: copy.deepcopy(config[k]) for k in STAGE_SECTIONS[stage] if k in config}
    if variant_name is not None:
        out["variant"] = copy.deepcopy(variant(config, variant_name))
    return out


def _slice_schema(stage: str, with_variant: bool) -> dict:
    """The schema of one stage's slice: its sections' schemas (as in the full config) plus ``variant``."""
    full = _schema()
    props = {k: full["properties"][k] for k in STAGE_SECTIONS[stage]}
    if with_variant:
        props["variant"] = full["properties"]["variants"]["items"]
    if stage == "train":  # pseudo-label rounds >= 2 (rounds.train_slice)
        props["pseudo"] = {
            "type": "object",
            "properties": {"round": {"type": "integer", "minimum": 2}, "init": {"type": ["string", "null"]}},
        }
    required = [k for k in full.get("required", []) if k in props] + (["variant"] if with_variant else [])
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def validate_slice(stage: str, cfg: dict) -> dict:
    """Validate the slice a stage was handed (``--cfg`` JSON) and fill the schema's defaults, at the stage's entry:
    a slice written by hand or by an older workflow gets the same values and the same one-line errors as a config
    file. Raises ConfigError naming the key."""
    if stage not in STAGE_SECTIONS:
        return cfg
    resolved = copy.deepcopy(cfg)
    validator = _defaulting_validator(_slice_schema(stage, "variant" in cfg))
    for _ in range(2):
        errors = sorted(validator.iter_errors(resolved), key=lambda e: list(e.absolute_path))
        if errors:
            key = ".".join(str(p) for p in errors[0].absolute_path) or "<top level>"
            raise ConfigError(f"--cfg for stage {stage}, key '{key}': {errors[0].message}")
    return resolved


def to_json(obj: Any) -> str:
    """Canonical JSON (sorted keys) of a config or slice: stable for hashing and params."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def config_hash(obj: Any) -> str:
    """Short content hash of a config or slice, used in messages and file headers."""
    return hashlib.sha256(to_json(obj).encode()).hexdigest()[:12]
