# Shared paths and helpers. Every path of the DAG is defined here, once.
import json

from carvana_seg import config as cs_config

config.update(cs_config.resolve(config))  # same schema, plus cross-key checks and nested defaults

NAME = config["name"]
DATA = f"data/{NAME}"
RES = f"results/{NAME}"
RAW = f"{DATA}/raw"
LOGS = f"{RES}/logs"
BENCH = f"{RES}/benchmarks"
VARIANTS = {v["name"]: v for v in config["variants"]}
FOLDS = cs_config.fold_ids(config)
ENV = "../../environment.yml"  # for --software-deployment-method conda
PY = "python -m carvana_seg"  # TODO remove once every rule spells the command out (lint)

wildcard_constraints:
    variant="|".join(VARIANTS),
    fold=r"\d+",


def cfg(stage, variant=None):
    """The JSON config slice a stage reads; as a rule param it makes Snakemake rerun exactly what a change touches."""
    return cs_config.to_json(cs_config.stage_config(config, stage, variant))


def size_of(variant):
    v = VARIANTS[variant]
    return f"{v['width']}x{v['height']}"


def cache_dir(variant):
    return f"{DATA}/cache/{size_of(variant)}"


def final_targets():
    targets = [f"{RES}/submission.csv.gz", f"{RES}/oof_dice.csv"]
    if config["data"]["source"] == "synthetic":
        targets.append(f"{RES}/test_score.json")
    return targets
