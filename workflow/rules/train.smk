# Training stages: train (variant x fold, resumable) -> oof (flip-TTA OOF predictions) -> oof_table.
# The resume state lives in {RES}/state/<variant>/fold<k>: deliberately not an output, so Snakemake keeps it
# when a job fails or is killed, and the rerun continues from the last finished epoch. It and the live TensorBoard
# curves are the only files a rule writes that are not outputs, and no rule reads them. Without a shared
# filesystem both also go to the state store (STATE_STORE, common.smk: the storage prefix or state_store; the job reads it from
# $CARVANA_SEG_STATE_STORE), where a
# retried job on another node finds them (training/state_store.py).
# {rdir} is a round's results directory: RES for round one, RES/round<r> for pseudo-label round r (pseudo.smk),
# which adds that round's pseudo-label layout to training (--extra-layout) and may start from an earlier model.


rule train:
    input:
        folds=f"{RES}/folds.csv",
        images=lambda wc: f"{cache_dir(wc.variant)}/images.npy",
        masks=lambda wc: f"{cache_dir(wc.variant)}/masks.npy",
        ids=lambda wc: f"{cache_dir(wc.variant)}/ids.txt",
        extra=train_extra_inputs,
    output:
        model="{rdir}/models/{variant}/fold{fold}/best.pt",
        metrics="{rdir}/models/{variant}/fold{fold}/metrics.csv",
    log:
        "{rdir}/logs/train/{variant}_fold{fold}.log",
    benchmark:
        "{rdir}/benchmarks/train/{variant}_fold{fold}.tsv"
    conda:
        ENV_TORCH
    threads: cs_resources.threads(config, "train")
    resources:
        gpu=cs_resources.gpus(config, "train"),
    params:
        code=code("train"),
        cfg=train_cfg,
        state=lambda wc: f"{wc.rdir}/state/{wc.variant}/fold{wc.fold}",
        extra=train_extra_args,  # paths from input.extra (the storage provider's local copies, where one is used)
        # live curves (make tensorboard), like the state not an output: a rerun resumes the run's event steps
        tb=lambda wc: f"{RES}/tensorboard/{wc.variant}_fold{wc.fold}_round{round_of(wc)}",
    shell:
        "python -m carvana_seg train --cfg {params.cfg:q} --variant {wildcards.variant} --fold {wildcards.fold}"
        " --folds {input.folds} --cache $(dirname {input.images}) --out-model {output.model} --out-metrics {output.metrics}"
        " --state-dir {params.state} --tensorboard {params.tb} {params.extra} --threads {threads} > {log} 2>&1"


rule oof:
    input:
        model="{rdir}/models/{variant}/fold{fold}/best.pt",
        folds=f"{RES}/folds.csv",
        manifest=f"{DATA}/fetch.json",
        images=lambda wc: f"{cache_dir(wc.variant)}/images.npy",
        masks=lambda wc: f"{cache_dir(wc.variant)}/masks.npy",  # resize_cache.load maps all three
        ids=lambda wc: f"{cache_dir(wc.variant)}/ids.txt",
        raw=RAW,
    output:
        npz="{rdir}/oof/{variant}/fold{fold}.npz",
        dice="{rdir}/oof/{variant}/fold{fold}_dice.csv",
    log:
        "{rdir}/logs/oof/{variant}_fold{fold}.log",
    benchmark:
        "{rdir}/benchmarks/oof/{variant}_fold{fold}.tsv"
    conda:
        ENV_TORCH
    threads: cs_resources.threads(config, "oof")
    resources:
        gpu=cs_resources.gpus(config, "oof"),
    params:
        code=code("oof"),
        cfg=lambda wc: cfg("oof", wc.variant),
    shell:
        "python -m carvana_seg oof --cfg {params.cfg:q} --variant {wildcards.variant} --fold {wildcards.fold}"
        " --model {input.model} --folds {input.folds} --cache $(dirname {input.images}) --raw {input.raw}"
        " --out {output.npz} --out-dice {output.dice} --threads {threads} > {log} 2>&1"


rule oof_table:
    input:
        dice=round_oof_tables,
    output:
        table="{rdir}/oof_dice.csv",
    log:
        "{rdir}/logs/oof_table.log",
    conda:
        ENV_BASE
    params:
        code=code("oof-table"),
    shell:
        "python -m carvana_seg oof-table --inputs {input.dice} --out {output.table} > {log} 2>&1"
