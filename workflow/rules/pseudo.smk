# Pseudo-labelling (config `pseudo_label:`): round r-1's ensemble -> the most confident test images, no car the
# outlier check flagged, as a Kaggle training layout data/<name>/pseudo/round<r>/ (links to the test JPEGs, GIF
# masks: round r's training decodes them in its DataLoader workers, never cached at each size) -> round r's
# train/oof/threshold/ensemble/outliers (the {rdir} rules of train.smk, predict.smk, outliers.smk, in
# results/<name>/round<r>/) -> pseudo_gain.json compares the rounds.
# With pseudo_label.enabled: false none of these jobs exist (LAST == 1).


wildcard_constraints:
    round=r"[2-9]|[1-9]\d+",


rule pseudo_labels:
    input:
        manifest=lambda wc: f"{round_dir(int(wc.round) - 1)}/test_probs.json",
        threshold=lambda wc: f"{round_dir(int(wc.round) - 1)}/threshold.json",
        outliers=lambda wc: f"{round_dir(int(wc.round) - 1)}/outliers.csv",
        shards=lambda wc: f"{round_dir(int(wc.round) - 1)}/test_probs",
        raw=RAW,
    output:
        masks_csv=f"{DATA}/pseudo/round{{round}}/train_masks.csv",
        photos=directory(f"{DATA}/pseudo/round{{round}}/train"),  # links to raw/test (relative: storage keeps them)
        masks=directory(f"{DATA}/pseudo/round{{round}}/train_masks"),
        table=f"{RES}/round{{round}}/pseudo_labels.csv",
        summary=f"{RES}/round{{round}}/pseudo_labels.json",
    log:
        f"{RES}/round{{round}}/logs/pseudo_labels.log",
    benchmark:
        f"{RES}/round{{round}}/benchmarks/pseudo_labels.tsv"
    conda:
        ENV_BASE
    threads: cs_resources.threads(config, "pseudo_labels")
    params:
        code=code("pseudo"),
        cfg=cs_config.to_json(cs_rounds.pseudo_slice(config)),
    shell:
        "python -m carvana_seg pseudo --cfg {params.cfg:q} --manifest {input.manifest} --threshold {input.threshold}"
        " --outliers {input.outliers} --raw {input.raw} --out-dir $(dirname {output.masks_csv})"
        " --table {output.table} --summary {output.summary} --round {wildcards.round} --threads {threads}"
        " > {log} 2>&1"


rule pseudo_gain:
    input:
        unpack(gain_inputs),
    output:
        summary=f"{RES}/pseudo_gain.json",
    log:
        f"{LOGS}/pseudo_gain.log",
    conda:
        ENV_BASE
    threads: cs_resources.threads(config, "pseudo_gain")
    params:
        code=code("pseudo-gain"),
        measure=lambda wc, input: (
            f"--truth {input.truth}/test_masks.csv --scores {' '.join(input.scores)}"
            f" --submissions {' '.join(input.submissions)}"
            if config["data"]["source"] == "synthetic"
            else ""
        ),
    shell:
        "python -m carvana_seg pseudo-gain --thresholds {input.thresholds} --oof-tables {input.oof_tables}"
        " --pseudo-tables {input.pseudo_tables} --pseudo-masks {input.pseudo_masks} {params.measure}"
        " --raw {input.raw} --out {output.summary} --threads {threads} > {log} 2>&1"
