# Prediction stages: OOF threshold search -> streaming test ensemble -> [outliers.smk] -> validated submission
# (with the outlier fixes) -> score | submit.
# The ensemble writes its shards into test_probs.resume/ (not an output: a failed or killed job keeps its finished
# shards there and the rerun resumes at the first missing one) and renames it to the test_probs/ output at the end.
# Its path is the plain {rdir} one, never a storage provider's local copy, so that its keys in the state store
# (inference/shard_store.py) are the same on every node.
# {rdir}: a round's results (RES, or RES/round<r> with pseudo-labelling, see pseudo.smk); {sfx}: '' for the last
# round's submission.csv.gz / test_score.json, _round<r> for an earlier round's.


rule threshold:
    input:
        oof=ensemble_oof,
        raw=RAW,
    output:
        threshold="{rdir}/threshold.json",
        curve="{rdir}/threshold_curve.csv",
        images="{rdir}/oof_image_dice.csv",
    log:
        "{rdir}/logs/threshold.log",
    benchmark:
        "{rdir}/benchmarks/threshold.tsv"
    conda:
        ENV_BASE
    threads: cs_resources.threads(config, "threshold")
    params:
        code=code("threshold"),
        cfg=cfg("threshold"),
    shell:
        "python -m carvana_seg threshold --cfg {params.cfg:q} --oof {input.oof} --raw {input.raw} --out {output.threshold}"
        " --curve {output.curve} --out-images {output.images} --threads {threads} > {log} 2>&1"


rule ensemble:
    input:
        models=ensemble_models,
        summary=f"{RES}/data_validation.json",
        raw=RAW,
    output:
        manifest="{rdir}/test_probs.json",
        shards=directory("{rdir}/test_probs"),
    log:
        "{rdir}/logs/ensemble.log",
    benchmark:
        "{rdir}/benchmarks/ensemble.tsv"
    conda:
        ENV_TORCH
    threads: cs_resources.threads(config, "ensemble")
    resources:
        gpu=cs_resources.gpus(config, "ensemble"),
    params:
        code=code("ensemble"),
        cfg=cfg("ensemble"),
    shell:
        "python -m carvana_seg ensemble --cfg {params.cfg:q} --models {input.models} --raw {input.raw}"
        " --out-dir {output.shards} --resume-dir {wildcards.rdir}/test_probs.resume --manifest {output.manifest}"
        " --threads {threads} > {log} 2>&1"


rule submission:
    input:
        manifest=lambda wc: f"{round_dir(round_of(wc))}/test_probs.json",
        shards=lambda wc: f"{round_dir(round_of(wc))}/test_probs",
        threshold=lambda wc: f"{round_dir(round_of(wc))}/threshold.json",
        fixes=lambda wc: f"{round_dir(round_of(wc))}/outlier_fixes.csv",
        raw=RAW,
    output:
        submission=f"{RES}/submission{{sfx}}.csv.gz",
    log:
        f"{LOGS}/submission{{sfx}}.log",
    benchmark:
        f"{BENCH}/submission{{sfx}}.tsv"
    conda:
        ENV_BASE
    threads: cs_resources.threads(config, "submission")
    params:
        code=code("submission"),
        cfg=cfg("submission"),
    shell:
        "python -m carvana_seg submission --cfg {params.cfg:q} --manifest {input.manifest} --threshold {input.threshold}"
        " --fixes {input.fixes} --sample-submission {input.raw}/sample_submission.csv --out {output.submission} --threads {threads}"
        " > {log} 2>&1"


rule score:
    input:
        submission=f"{RES}/submission{{sfx}}.csv.gz",
        truth=TRUTH,
        raw=RAW,
    output:
        score=f"{RES}/test_score{{sfx}}.json",
    log:
        f"{LOGS}/score{{sfx}}.log",
    conda:
        ENV_BASE
    params:
        code=code("score"),
    shell:
        "python -m carvana_seg score --submission {input.submission} --truth {input.truth}/test_masks.csv"
        " --raw {input.raw}"
        " --out {output.score} > {log} 2>&1"


rule submit:
    input:
        submission=f"{RES}/submission.csv.gz",
        raw=RAW,
    output:
        record=f"{RES}/kaggle_submit.json",
    log:
        f"{LOGS}/submit.log",
    conda:
        ENV_BASE
    params:
        code=code("submit"),
        cfg=cfg("submit"),
        competition=config["data"]["competition"],
        config_hash=cs_config.config_hash(config),
    shell:
        "python -m carvana_seg submit --cfg {params.cfg:q} --submission {input.submission} --competition {params.competition}"
        " --config-hash {params.config_hash} --raw {input.raw} --out {output.record} > {log} 2>&1"
