# Shared paths and helpers. Every path of the DAG is defined here, once.
import json
import os
import re

from carvana_seg.pipeline import codedeps
from carvana_seg.pipeline import config as cs_config
from carvana_seg.pipeline import failed_logs as cs_failed_logs
from carvana_seg.pipeline import launch as cs_launch
from carvana_seg.pipeline import preflight as cs_preflight
from carvana_seg.pipeline import resources as cs_resources
from carvana_seg.pipeline import rounds as cs_rounds
from carvana_seg.pipeline import slurm_watch as cs_slurm_watch
from carvana_seg.pipeline import state_location as cs_state
from snakemake.logging import logger

config.update(cs_config.resolve(config))  # same schema, plus cross-key checks and nested defaults

# Jobs run `python -m carvana_seg` with the python of the environment Snakemake runs from (carvana_seg.pipeline.launch).
cs_launch.prepare_job_environment(workflow.basedir)

# Where training's resume state also goes, so that a retry on another node resumes (pipeline.state_location): the
# state_store key, or without a shared filesystem the default storage prefix. Handed to train jobs in the
# environment (every job's own Snakemake parses this file), not as a param: moving it reruns nothing.
STATE_STORE, SHARED_IO = cs_state.from_workflow(config["state_store"], workflow.storage_settings)
cs_state.export(STATE_STORE)


# Before the first job starts (never on a dry-run): the state-store warning, and on Slurm the preflight, which
# stops the run with one line when a job asks more than any node of its partition has (pipeline.preflight), and
# the watch, which ends it when a job then stays pending for a reason that cannot clear (pipeline.slurm_watch).
onstart:
    if cs_state.warning(STATE_STORE, SHARED_IO):
        logger.warning(cs_state.warning(STATE_STORE, SHARED_IO))
    if workflow.executor_plugin is not None and workflow.executor_plugin.name == "slurm":
        cs_preflight.check(
            [cs_preflight.ask_of_job(j) for j in workflow.dag.needrun_jobs() if not j.is_local],
            cs_preflight.read_sinfo(),
        )
        cs_slurm_watch.Watch(os.getcwd(), report=logger.error).start()


# After a failed run, each failed job's one-line error from its log (Snakemake shows only the log's path).
onerror:
    for line in cs_failed_logs.failed_job_errors(log):
        logger.error(line)


NAME = config["name"]
DATA = f"data/{NAME}"
RES = f"results/{NAME}"
RAW = f"{DATA}/raw"  # a directory output of fetch (data.smk), a declared input of each rule that reads it
TRUTH = f"{DATA}/ground_truth"  # synthetic data only: fetch writes the hidden test masks here (test_masks.csv)
LOGS = f"{RES}/logs"
BENCH = f"{RES}/benchmarks"
VARIANTS = {v["name"]: v for v in config["variants"]}
FOLDS = cs_config.fold_ids(config)
LAST = cs_rounds.last_round(config)  # pseudo-labelling rounds (workflow/rules/pseudo.smk); 1 when disabled
ROUNDS = list(range(1, LAST + 1))
# Conda environments (--software-deployment-method conda), relative to workflow/rules/: the light one for data and
# submission rules, the torch one for the rules that run models (tests/pipeline/test_environment.py checks each rule's).
ENV_BASE = "../envs/base.yaml"
ENV_TORCH = "../envs/torch.yaml"


wildcard_constraints:
    variant="|".join(VARIANTS),
    fold=r"\d+",
    rdir=re.escape(RES) + r"(?:/round(?:[2-9]|[1-9]\d+))?",  # a round's results: RES (round one) or RES/round<r>
    sfx=r"(?:_round\d+)?",  # a round's submission/score name: '' for the last round


def cfg(stage, variant=None):
    """The JSON config slice a stage reads; as a rule param it makes Snakemake rerun exactly what a change touches."""
    return cs_config.to_json(cs_config.stage_config(config, stage, variant))


def code(stage):
    """The fingerprint of the library code `python -m carvana_seg <stage>` runs (carvana_seg.pipeline.codedeps), as a
    rule's `code=` param: Snakemake does not track imported modules, so a change to what that code computes reruns
    the stage (params trigger) and what follows; comments, docstrings, formatting and the project's path do not."""
    return codedeps.stage_fingerprint(stage)


def size_of(variant):
    v = VARIANTS[variant]
    return f"{v['width']}x{v['height']}"


def cache_dir(variant):
    return f"{DATA}/cache/{size_of(variant)}"


def round_dir(r):
    """Results directory of round ``r``: RES for round one, RES/round<r> after (carvana_seg.pipeline.rounds)."""
    return cs_rounds.round_dir(RES, r)


def round_of(wc):
    """The round of a job from its ``rdir`` or ``sfx`` wildcard."""
    if hasattr(wc, "rdir"):
        return cs_rounds.round_of_dir(RES, wc.rdir)
    return cs_rounds.round_of_suffix(config, wc.sfx)


def model_path(variant, fold, r):
    return f"{round_dir(r)}/models/{variant}/fold{fold}/best.pt"


def pseudo_dir(r):
    """Round ``r``'s pseudo-labelled test images in the Kaggle training layout (workflow/rules/pseudo.smk)."""
    return f"{DATA}/pseudo/round{r}"


def train_cfg(wc):
    return cs_config.to_json(cs_rounds.train_slice(config, wc.variant, round_of(wc)))


def _retraining(wc):
    """(round, init round or None) of a train job; rounds >= 2 train only pseudo_label.variants."""
    r = round_of(wc)
    if wc.variant not in cs_rounds.round_variants(config, r):
        raise ValueError(f"variant {wc.variant} is not retrained in round {r} (pseudo_label.variants)")
    return r, cs_rounds.init_round(config, wc.variant, r)


def truth_output():
    """fetch's output of the hidden test masks: ``truth=directory(TRUTH)`` on synthetic data, nothing otherwise."""
    return {"truth": directory(TRUTH)} if config["data"]["source"] == "synthetic" else {}


def train_extra_inputs(wc):
    """Round >= 2: the round's pseudo-label layout (its train_masks.csv, train_masks/ GIFs and train/ links to the
    test JPEGs in raw/, decoded by the DataLoader: never cached at each size), and the model it starts from."""
    r, init = _retraining(wc)
    if r == 1:
        return []
    layout = [f"{pseudo_dir(r)}/{part}" for part in ("train_masks.csv", "train_masks", "train")] + [RAW]
    return layout + ([model_path(wc.variant, wc.fold, init)] if init else [])


def train_extra_args(wc, input):
    """``--extra-layout`` and ``--init-from`` from the job's declared inputs (train_extra_inputs' order)."""
    extra = list(input.extra)
    if not extra:
        return ""
    args = f"--extra-layout {os.path.dirname(extra[0])}"
    return args + (f" --init-from {extra[4]}" if len(extra) > 4 else "")


def ensemble_models(wc):
    """Every variant x fold model of a round: each variant's from the last round <= r that trained it."""
    r = round_of(wc)
    return [model_path(v, f, cs_rounds.latest_round(config, v, r)) for v in VARIANTS for f in FOLDS]


def ensemble_oof(wc):
    r = round_of(wc)
    return [f"{round_dir(cs_rounds.latest_round(config, v, r))}/oof/{v}/fold{f}.npz" for v in VARIANTS for f in FOLDS]


def round_oof_tables(wc):
    """The per-fold OOF Dice tables of the variants trained in a round."""
    r = round_of(wc)
    return [f"{wc.rdir}/oof/{v}/fold{f}_dice.csv" for v in cs_rounds.round_variants(config, r) for f in FOLDS]


def gain_inputs(wildcards):
    """pseudo_gain's inputs: every round's threshold and OOF table, every later round's pseudo-labels; on synthetic
    data every round's submission and test score too (it and score are the only readers of ground_truth/)."""
    out = {
        "raw": RAW,
        "thresholds": [f"{round_dir(r)}/threshold.json" for r in ROUNDS],
        "oof_tables": [f"{round_dir(r)}/oof_dice.csv" for r in ROUNDS],
        "pseudo_tables": [f"{RES}/round{r}/pseudo_labels.csv" for r in ROUNDS[1:]],
        "pseudo_masks": [f"{pseudo_dir(r)}/train_masks.csv" for r in ROUNDS[1:]],
    }
    if config["data"]["source"] == "synthetic":
        out["truth"] = TRUTH
        out["scores"] = [f"{RES}/test_score{cs_rounds.suffix(config, r)}.json" for r in ROUNDS]
        out["submissions"] = [f"{RES}/submission{cs_rounds.suffix(config, r)}.csv.gz" for r in ROUNDS]
    return out


def benchmark_files():
    """Every benchmark TSV the report's time-per-stage table reads (results/<name>/benchmarks/ and each later
    round's round<r>/benchmarks/), so that report_figures declares them instead of listing a directory. It is each
    benchmarked rule's ``benchmark:`` path, expanded over the DAG's jobs; a test runs the DAG and checks it."""
    files = [f"{BENCH}/fetch.tsv", f"{BENCH}/validate.tsv"]
    files += [f"{BENCH}/resize_{size}.tsv" for size in sorted({size_of(v) for v in VARIANTS})]
    for r in ROUNDS:
        rd, trained = round_dir(r), cs_rounds.round_variants(config, r)
        files += [
            f"{rd}/benchmarks/{stage}/{v}_fold{f}.tsv" for stage in ("train", "oof") for v in trained for f in FOLDS
        ]
        files += [f"{rd}/benchmarks/{stage}.tsv" for stage in ("threshold", "ensemble", "outliers")]
        files.append(f"{BENCH}/submission{cs_rounds.suffix(config, r)}.tsv")
        if r > 1:
            files.append(f"{RES}/round{r}/benchmarks/pseudo_labels.tsv")
    return files


def final_targets():
    targets = [f"{RES}/submission.csv.gz"] + [f"{round_dir(r)}/oof_dice.csv" for r in ROUNDS]
    targets.append(f"{RES}/report/stage_times.csv")  # report_figures (report.smk): the figures of `make report`
    if config["data"]["source"] == "synthetic":
        targets.append(f"{RES}/test_score.json")
    if LAST > 1:
        targets += [f"{RES}/submission{cs_rounds.suffix(config, r)}.csv.gz" for r in ROUNDS]
        targets.append(f"{RES}/pseudo_gain.json")
    return targets
