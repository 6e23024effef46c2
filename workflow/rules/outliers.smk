# Outlier-car sanity check, per round ({rdir}, see predict.smk): score every test image against the training cars'
# area profile, the car's other views and the rest of the test set; fix (largest component + wide holes filled,
# zoomed re-prediction of cars far smaller than any training car) or flag the outliers. It reads the ensemble's
# shards and never reruns it: changing `outliers:` reruns outliers -> submission -> score (and, with
# pseudo-labelling, the next round, which leaves flagged cars out). Only repredict: zoom runs models (a GPU job then).
ZOOM = cs_resources.zoom(config)


rule outliers:
    input:
        manifest="{rdir}/test_probs.json",
        shards="{rdir}/test_probs",
        threshold="{rdir}/threshold.json",
        folds=f"{RES}/folds.csv",
        models=ensemble_models,
        raw=RAW,
    output:
        table="{rdir}/outliers.csv",
        scores="{rdir}/outlier_scores.csv",
        fixes="{rdir}/outlier_fixes.csv",
        sheets=directory("{rdir}/outliers"),  # contact_sheets.json and the contact-sheet PNGs it lists
    log:
        "{rdir}/logs/outliers.log",
    benchmark:
        "{rdir}/benchmarks/outliers.tsv"
    conda:
        ENV_TORCH
    threads: cs_resources.threads(config, "outliers")
    resources:
        gpu=cs_resources.gpus(config, "outliers"),
    params:
        code=code("outliers"),
        cfg=cfg("outliers"),
        device="auto" if ZOOM else "cpu",
    shell:
        "python -m carvana_seg outliers --cfg {params.cfg:q} --manifest {input.manifest} --threshold {input.threshold}"
        " --folds {input.folds} --raw {input.raw} --models {input.models} --device {params.device}"
        " --out {output.table} --scores {output.scores} --fixes {output.fixes} --sheets {output.sheets}/contact_sheets.json"
        " --threads {threads} > {log} 2>&1"
