"""The table of pipeline stages: subcommand -> module, config slice and help; and which stages run models.

A plain table with no imports, read by the CLI (dispatch), ``codedeps`` (code fingerprints) and the workflow
(which rules ask for a GPU), so none of them imports another to learn the list.
"""

from __future__ import annotations

# subcommand -> (module, config slice, help)
STAGES: dict[str, tuple[str, str | None, str]] = {
    "fetch": ("carvana_seg.data.fetch", "fetch", "bring the data into data/<name>/raw (kaggle, local or synthetic)"),
    "validate": ("carvana_seg.data.validate", "validate", "check every image and mask in a raw Kaggle layout"),
    "folds": ("carvana_seg.data.folds", "folds", "assign cars to K folds (grouped, area-stratified)"),
    "resize": ("carvana_seg.data.resize_cache", "resize", "build the resize cache for one resolution"),
    "train": ("carvana_seg.training.train", "train", "train one variant on one fold (resumable)"),
    "oof": ("carvana_seg.inference.oof", "oof", "out-of-fold predictions with flip-TTA for one variant x fold"),
    "oof-table": ("carvana_seg.inference.oof_table", None, "combine the per-fold OOF Dice tables and log the means"),
    "threshold": (
        "carvana_seg.inference.threshold",
        "threshold",
        "search the binarisation threshold on OOF predictions",
    ),
    "ensemble": ("carvana_seg.inference.ensemble", "ensemble", "streaming flip-TTA ensemble over the test set"),
    "outliers": (
        "carvana_seg.outliers.stage",
        "outliers",
        "flag the test cars whose masks look wrong; fix or flag them",
    ),
    "pseudo": ("carvana_seg.pseudo.stage", "pseudo", "pseudo-label the most confident test images for the next round"),
    "pseudo-gain": ("carvana_seg.pseudo.gain", None, "compare the pseudo-label rounds (OOF; test Dice on synthetic)"),
    "submission": ("carvana_seg.submission.writer", "submission", "write and validate the RLE submission"),
    "submit": ("carvana_seg.submission.kaggle_submit", "submit", "upload a submission to Kaggle"),
    "score": ("carvana_seg.submission.score", None, "score a submission against true masks (RLE csv)"),
    "predict": (
        "carvana_seg.inference.predict",
        None,
        "mask PNG and RGBA cut-out for any photo, with the trained ensemble",
    ),
    "serve": ("carvana_seg.serve.command", None, "cut-out HTTP API and page of a run's final ensemble"),
    "bundle": (
        "carvana_seg.inference.bundle",
        None,
        "pack a run's final ensemble into one portable file (serve, predict)",
    ),
    "export": ("carvana_seg.inference.export", None, "export one variant's model to ONNX and check it against PyTorch"),
    "report-figures": ("carvana_seg.report.figures", None, "figures and tables of the HTML report (make report)"),
    "plan": ("carvana_seg.plan.command", None, "what a config will cost: jobs, images, disk, FLOPs, device-hours"),
}
# stages that run models: each claims a free GPU (carvana_seg.pipeline.gpu) before torch can initialise CUDA
GPU_STAGES = {"train", "oof", "ensemble", "predict", "outliers", "serve"}  # outliers: only for repredict: zoom
# Snakemake rule -> the stage its job runs (rules outside this table run no stage: ``all``)
RULES: dict[str, str] = {
    "fetch": "fetch",
    "validate_data": "validate",
    "folds": "folds",
    "resize_cache": "resize",
    "train": "train",
    "oof": "oof",
    "oof_table": "oof-table",
    "threshold": "threshold",
    "ensemble": "ensemble",
    "outliers": "outliers",
    "pseudo_labels": "pseudo",
    "pseudo_gain": "pseudo-gain",
    "submission": "submission",
    "score": "score",
    "submit": "submit",
    "report_figures": "report-figures",
}
# the rules of GPU stages: each asks for `gpu=1` (outliers only with repredict: zoom) and both cluster profiles list
# exactly these with their GPU request (tests/pipeline/test_profiles.py)
GPU_RULES = tuple(rule for rule, stage in RULES.items() if stage in GPU_STAGES)
# rules that need the internet: run on the submitting host, never as cluster jobs (Snakefile `localrules`)
LOCAL_RULES = ("fetch", "submit")
