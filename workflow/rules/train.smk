# Training stages: train (variant x fold, resumable) -> oof (flip-TTA OOF predictions) -> oof_table.
# The resume state lives in {RES}/state/<variant>/fold<k>: deliberately not an output, so Snakemake keeps it
# when a job fails or is killed, and the rerun continues from the last finished epoch.


def cache_files(wc):
    d = cache_dir(wc.variant)
    return {"images": f"{d}/images.npy", "masks": f"{d}/masks.npy", "ids": f"{d}/ids.txt"}


rule train:
    input:
        unpack(cache_files),
        folds=f"{RES}/folds.csv",
    output:
        model=f"{RES}/models/{{variant}}/fold{{fold}}/best.pt",
        metrics=f"{RES}/models/{{variant}}/fold{{fold}}/metrics.csv",
    params:
        cfg=lambda wc: cfg("train", wc.variant),
        cache=lambda wc: cache_dir(wc.variant),
        state=lambda wc: f"{RES}/state/{wc.variant}/fold{wc.fold}",
    log:
        f"{LOGS}/train/{{variant}}_fold{{fold}}.log",
    benchmark:
        f"{BENCH}/train/{{variant}}_fold{{fold}}.tsv"
    threads: 2
    resources:
        gpu=1,
    shell:
        "{PY} train --cfg {params.cfg:q} --variant {wildcards.variant} --fold {wildcards.fold}"
        " --folds {input.folds} --cache {params.cache} --out-model {output.model} --out-metrics {output.metrics}"
        " --state-dir {params.state} --threads {threads} > {log} 2>&1"


rule oof:
    input:
        unpack(cache_files),
        model=f"{RES}/models/{{variant}}/fold{{fold}}/best.pt",
        folds=f"{RES}/folds.csv",
        manifest=f"{DATA}/fetch.json",
    output:
        npz=f"{RES}/oof/{{variant}}/fold{{fold}}.npz",
        dice=f"{RES}/oof/{{variant}}/fold{{fold}}_dice.csv",
    params:
        cfg=lambda wc: cfg("oof", wc.variant),
        cache=lambda wc: cache_dir(wc.variant),
        raw=RAW,
    log:
        f"{LOGS}/oof/{{variant}}_fold{{fold}}.log",
    benchmark:
        f"{BENCH}/oof/{{variant}}_fold{{fold}}.tsv"
    threads: 2
    resources:
        gpu=1,
    shell:
        "{PY} oof --cfg {params.cfg:q} --variant {wildcards.variant} --fold {wildcards.fold}"
        " --model {input.model} --folds {input.folds} --cache {params.cache} --raw {params.raw}"
        " --out {output.npz} --out-dice {output.dice} --threads {threads} > {log} 2>&1"


rule oof_table:
    input:
        expand(f"{RES}/oof/{{variant}}/fold{{fold}}_dice.csv", variant=list(VARIANTS), fold=FOLDS),
    output:
        table=f"{RES}/oof_dice.csv",
    log:
        f"{LOGS}/oof_table.log",
    shell:
        "{PY} oof-table --inputs {input} --out {output.table} > {log} 2>&1"
