"""``python -m carvana_seg plan --configfile CONFIG [MORE ...] [--gpu h100]``: print what a config will cost.

Config files are merged in order, later keys winning (Snakemake's ``--configfile a.yaml b.yaml``), then validated
with the schema's defaults. The table lists every stage of the DAG: jobs, images, disk written, model TFLOPs and
projected device-hours on ``--gpu`` (a row of ``plan.throughput``; ``cpu`` is measured, GPU rows are marked
assumptions), then the totals, the peak disk and the reference: the competition's 1st-place team spent about
2,140 GPU-hours training and 320 predicting. ``--json`` also writes the plan for the HTML report.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import yaml

from carvana_seg.pipeline import config as cfgmod
from carvana_seg.pipeline import staging
from carvana_seg.pipeline.errors import ConfigError
from carvana_seg.plan import throughput as tp
from carvana_seg.plan.data import data_size
from carvana_seg.plan.stages import Stage, peak_disk, plan_stages

log = logging.getLogger(__name__)
REFERENCE = "1st place (2017): ~2,140 GPU-hours training, ~320 predicting"


def _merge(base: dict, over: dict) -> dict:
    """``over`` merged into ``base`` recursively (mappings merge, everything else is replaced)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_configs(paths: list[str]) -> dict:
    """Merge the config files in order (later wins) and resolve the result against the schema."""
    merged: dict = {}
    for path in paths:
        if not Path(path).is_file():
            raise ConfigError(f"config file not found: {path}")
        raw = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: config must be a mapping")
        merged = _merge(merged, raw)
    return cfgmod.resolve(merged)


def make_plan(config: dict, gpu: str) -> dict:
    """The plan of a resolved config on device ``gpu``: stages, totals, peak disk (bytes), the device row."""
    dev, data = tp.device(gpu), data_size(config)
    stages = plan_stages(config, data, dev)
    gpu_hours = {
        kind: sum(s.hours for s in stages if s.rule in rules)
        for kind, rules in (("train", {"train"}), ("predict", {"oof", "ensemble", "outliers"}))
    }
    return {
        "config": config["name"],
        "device": vars(dev),
        "data": vars(data),
        "stages": [vars(s) for s in stages],
        "jobs": {s.rule: s.jobs for s in stages if s.jobs},
        "peak_disk": peak_disk(stages, data),
        "hours": gpu_hours,
        "reference": REFERENCE,
    }


def format_plan(plan: dict) -> str:
    """The printed table."""
    dev, d = plan["device"], plan["data"]
    lines = [
        f"plan of '{plan['config']}': {d['n_train']:,} training and {d['n_test']:,} test photos of "
        f"{d['width']}x{d['height']} ({d['source']}); device {dev['name']}: {dev['source']}",
        f"{'stage':15} {'jobs':>5} {'images':>13} {'disk GB':>9} {'TFLOP':>12} {'hours':>9}  notes",
    ]
    for s in (Stage(**row) for row in plan["stages"]):
        hours = f"{s.hours:9.2f}" if s.gpu else f"{'(cpu)':>9}"
        lines.append(
            f"{s.rule:15} {s.jobs:5d} {s.images:13,.0f} {s.disk / 1e9:9.2f} {s.flops / 1e12:12,.0f} {hours}"
            f"  {'; '.join(s.notes)}"
        )
    h = plan["hours"]
    lines += [
        f"total: {sum(plan['jobs'].values())} jobs; {dev['name']} hours: training {h['train']:,.1f}, "
        f"predicting {h['predict']:,.1f} (reference: {plan['reference']})",
        f"peak disk under data/ and results/: {plan['peak_disk'] / 1e9:.1f} GB",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configfile", nargs="+", required=True, help="config files, merged in order (later wins)")
    parser.add_argument("--gpu", default="h100", help=f"throughput-table row ({', '.join(tp.DEVICES)})")
    parser.add_argument("--json", default=None, help="also write the plan as JSON here")
    parser.add_argument(
        "--profile",
        default=None,
        metavar="DIR",
        help="a workflow profile (profiles/slurm): with the slurm executor, check every job against `sinfo`",
    )


def slurm_preflight(config: dict, plan: dict, profile_dir: str) -> str:
    """The Snakefile's Slurm preflight (pipeline.preflight) on the plan's rules, under ``profile_dir``'s resources:
    one line when every job fits a node, else the ConfigError the run would stop with."""
    from carvana_seg.pipeline import preflight
    from carvana_seg.pipeline.stages import LOCAL_RULES

    path = Path(profile_dir) / "profile.yaml"
    if not path.is_file():
        raise ConfigError(f"--profile {profile_dir}: no profile.yaml there")
    profile = yaml.safe_load(path.read_text()) or {}
    if profile.get("executor") != "slurm":
        return f"profile {profile_dir}: executor {profile.get('executor', 'local')}, no Slurm preflight"
    rules = [r for r in plan["jobs"] if r not in LOCAL_RULES and r != "all"]  # all: a target, run locally
    preflight.check(preflight.asks_from_profile(config, profile, rules), preflight.read_sinfo())
    return f"Slurm preflight ({profile_dir}): every job of {len(rules)} rules fits a node of its partition"


def run(args: argparse.Namespace, cfg: dict) -> None:  # noqa: ARG001 (the plan reads whole config files)
    config = load_configs(args.configfile)
    plan = make_plan(config, args.gpu)
    print(format_plan(plan))
    if args.profile:
        print(slurm_preflight(config, plan, args.profile))
    if args.json:
        staging.write_text(Path(args.json), json.dumps(plan, indent=2) + "\n")
