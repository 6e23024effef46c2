# HTML report: `make report` (snakemake --report results/<name>/report.html). The rule below draws the figures and
# tables from the finished run (report-figures stage); the report embeds them with the captions in workflow/report/.
# With pseudo-labelling (pseudo.smk) it also plots every round's training curves and pseudo-label tables; the
# threshold, outliers and throughput are the final round's.


report: "../report/workflow.rst"


REPORT = f"{RES}/report"


# The final round's OOF npz of every variant x fold (each variant's from the last round that trained it).
LAST_OOF = [
    f"{round_dir(cs_rounds.latest_round(config, v, LAST))}/oof/{v}/fold{f}.npz" for v in VARIANTS for f in FOLDS
]

# (round, variant, fold) of every training job: all variants in round one, the retrained ones after
TRAINED = [(r, v, f) for r in ROUNDS for v in cs_rounds.round_variants(config, r) for f in FOLDS]


rule report_figures:
    input:
        metrics=[f"{round_dir(r)}/models/{v}/fold{f}/metrics.csv" for r, v, f in TRAINED],
        oof_dice=f"{RES}/oof_dice.csv",  # round one: every variant on the same data (the architecture comparison)
        threshold=f"{round_dir(LAST)}/threshold.json",  # the final round's: what the submission used
        curve=f"{round_dir(LAST)}/threshold_curve.csv",
        outliers=f"{round_dir(LAST)}/outliers.csv",
        sheets=f"{round_dir(LAST)}/outliers",  # contact_sheets.json and its PNGs
        test_probs=f"{round_dir(LAST)}/test_probs.json",
        benchmarks=benchmark_files(),  # time per stage: every benchmarked job's TSV, declared (common.smk)
        pseudo=[f"{RES}/pseudo_gain.json"] if LAST > 1 else [],
        pseudo_tables=[f"{RES}/round{r}/pseudo_labels.csv" for r in ROUNDS[1:]],
        oof_images=f"{round_dir(LAST)}/oof_image_dice.csv",  # worst cars first (cars.html)
        folds=f"{RES}/folds.csv",
        oof_npz=LAST_OOF,
        score=[f"{RES}/test_score.json"] if config["data"]["source"] == "synthetic" else [],
        # the landing page's Dice per round: every round's threshold.json and (synthetic data) test score
        round_thresholds=[f"{round_dir(r)}/threshold.json" for r in ROUNDS],
        round_scores=(
            [f"{RES}/test_score{cs_rounds.suffix(config, r)}.json" for r in ROUNDS]
            if config["data"]["source"] == "synthetic"
            else []
        ),
        raw=RAW,
    output:
        curves=[
            report(
                f"{REPORT}/training_{v}_fold{f}{'' if r == 1 else f'_round{r}'}.png",
                caption="../report/training.rst",
                category="1. Training curves",
                subcategory=v if r == 1 else f"{v} round {r}",
                labels={"variant": v, "fold": f, "round": r},
            )
            for r, v, f in TRAINED
        ],
        oof_dice=report(
            f"{REPORT}/oof_dice.png",
            caption="../report/oof_dice.rst",
            category="2. Architecture comparison",
            labels={"figure": "OOF Dice per variant"},
        ),
        threshold=report(
            f"{REPORT}/threshold.png",
            caption="../report/threshold.rst",
            category="3. Threshold",
            labels={"figure": "threshold curve"},
        ),
        pseudo=report(
            f"{REPORT}/pseudo_labels.png",
            caption="../report/pseudo_labels.rst",
            category="4. Pseudo-labels",
            labels={"figure": "pseudo-label rounds"},
        ),
        outlier_table=report(
            f"{REPORT}/outliers.html",
            caption="../report/outlier_table.rst",
            category="5. Outliers",
            subcategory="flagged images",
            labels={"page": "outliers table"},
        ),
        gallery=report(
            f"{REPORT}/outlier_gallery.html",
            caption="../report/outlier_gallery.rst",
            category="5. Outliers",
            subcategory="contact sheets",
            labels={"page": "outlier gallery"},
        ),
        throughput=report(
            f"{REPORT}/throughput.png",
            caption="../report/throughput.rst",
            category="6. Throughput",
            labels={"figure": "time per stage"},
        ),
        stage_times=report(
            f"{REPORT}/stage_times.html",
            caption="../report/stage_times.rst",
            category="6. Throughput",
            labels={"figure": "time per stage (table)"},
        ),
        stage_csv=f"{REPORT}/stage_times.csv",
        cars=report(
            f"{REPORT}/cars.html",
            caption="../report/cars.rst",
            category="0. Worst cars first",
            labels={"page": "OOF Dice per car and view, worst cars' outlines"},
        ),
        cars_csv=f"{REPORT}/cars.csv",
        landing=f"{REPORT}/landing.rst",  # the headline numbers the report opens on (workflow/report/workflow.rst)
    log:
        f"{LOGS}/report_figures.log",
    benchmark:
        f"{BENCH}/report_figures.tsv"
    conda:
        ENV_TORCH  # the planned-vs-measured table counts model FLOPs (plan.model_cost)
    params:
        code=code("report-figures"),
        weights=" ".join(str(float(VARIANTS[v].get("weight", 1.0))) for v in VARIANTS for f in FOLDS),  # LAST_OOF's order
        score=lambda wc, input: f"--test-score {input.score}" if input.score else "",
        plan=cs_config.to_json(config),  # planned next to measured (carvana_seg.plan)
    shell:
        "python -m carvana_seg report-figures --metrics {input.metrics} --oof-dice {input.oof_dice}"
        " --threshold {input.threshold} --curve {input.curve} --outliers {input.outliers}"
        " --sheets {input.sheets}/contact_sheets.json --test-probs {input.test_probs} --results $(dirname {input.oof_dice})"
        " --inputs {input.benchmarks} {input.pseudo} {input.pseudo_tables} {input.round_thresholds} {input.round_scores}"
        " --out-dir $(dirname {output.stage_csv}) --oof-images {input.oof_images} --folds {input.folds}"
        " --oof-npz {input.oof_npz} --oof-weights {params.weights} --raw {input.raw} {params.score}"
        " --plan-config {params.plan:q} > {log} 2>&1"
