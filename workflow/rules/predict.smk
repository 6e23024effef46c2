# Prediction stages: OOF threshold search -> streaming test ensemble -> validated submission -> score | submit.
# The shard directory of the ensemble is a param, not an output: a failed or killed job keeps its finished
# shards and the rerun resumes at the first missing one.


rule threshold:
    input:
        oof=[f"{RES}/oof/{v}/fold{f}.npz" for v in VARIANTS for f in FOLDS],
    output:
        threshold=f"{RES}/threshold.json",
        curve=f"{RES}/threshold_curve.csv",
    params:
        cfg=cfg("threshold"),
        raw=RAW,
    conda:
        ENV
    log:
        f"{LOGS}/threshold.log",
    benchmark:
        f"{BENCH}/threshold.tsv"
    threads: 2
    shell:
        "python -m carvana_seg threshold --cfg {params.cfg:q} --oof {input.oof} --raw {params.raw} --out {output.threshold}"
        " --curve {output.curve} --threads {threads} > {log} 2>&1"


rule ensemble:
    input:
        models=[f"{RES}/models/{v}/fold{f}/best.pt" for v in VARIANTS for f in FOLDS],
        summary=f"{RES}/data_validation.json",
    output:
        manifest=f"{RES}/test_probs.json",
    params:
        cfg=cfg("ensemble"),
        raw=RAW,
        shards=lambda wildcards, output: output.manifest.removesuffix(".json"),  # {RES}/test_probs/
    resources:
        gpu=1,
    conda:
        ENV
    log:
        f"{LOGS}/ensemble.log",
    benchmark:
        f"{BENCH}/ensemble.tsv"
    threads: 2
    shell:
        "python -m carvana_seg ensemble --cfg {params.cfg:q} --models {input.models} --raw {params.raw} --out-dir {params.shards}"
        " --manifest {output.manifest} --threads {threads} > {log} 2>&1"


rule submission:
    input:
        manifest=f"{RES}/test_probs.json",
        threshold=f"{RES}/threshold.json",
    output:
        submission=f"{RES}/submission.csv.gz",
    params:
        cfg=cfg("submission"),
        sample=f"{RAW}/sample_submission.csv",
    conda:
        ENV
    log:
        f"{LOGS}/submission.log",
    benchmark:
        f"{BENCH}/submission.tsv"
    threads: 2
    shell:
        "python -m carvana_seg submission --cfg {params.cfg:q} --manifest {input.manifest} --threshold {input.threshold}"
        " --sample-submission {params.sample} --out {output.submission} --threads {threads} > {log} 2>&1"


rule score:
    input:
        submission=f"{RES}/submission.csv.gz",
    output:
        score=f"{RES}/test_score.json",
    params:
        truth=f"{DATA}/ground_truth/test_masks.csv",
        raw=RAW,
    conda:
        ENV
    log:
        f"{LOGS}/score.log",
    shell:
        "python -m carvana_seg score --submission {input.submission} --truth {params.truth} --raw {params.raw}"
        " --out {output.score} > {log} 2>&1"


rule submit:
    input:
        submission=f"{RES}/submission.csv.gz",
    output:
        record=f"{RES}/kaggle_submit.json",
    params:
        cfg=cfg("submit"),
        competition=config["data"]["competition"],
        config_hash=cs_config.config_hash(config),
        raw=RAW,
    conda:
        ENV
    log:
        f"{LOGS}/submit.log",
    shell:
        "python -m carvana_seg submit --cfg {params.cfg:q} --submission {input.submission} --competition {params.competition}"
        " --config-hash {params.config_hash} --raw {params.raw} --out {output.record} > {log} 2>&1"
