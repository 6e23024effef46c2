# Data stages: fetch (kaggle | local | synthetic) -> validate -> folds -> resize cache.
# data/<name>/raw is a directory output of fetch and a declared input of every rule that reads it (no rule reads a
# file it does not declare: the DAG runs without a shared filesystem, through a storage provider, docs/cluster.md).


rule fetch:
    output:
        manifest=f"{DATA}/fetch.json",
        raw=directory(RAW),
        **truth_output(),
    params:
        code=code("fetch"),
        cfg=cfg("fetch"),
    conda:
        ENV_BASE
    log:
        f"{LOGS}/fetch.log",
    benchmark:
        f"{BENCH}/fetch.tsv"
    threads: cs_resources.threads(config, "fetch")
    shell:
        "python -m carvana_seg fetch --cfg {params.cfg:q} --out {output.raw} --manifest {output.manifest}"
        " --threads {threads} > {log} 2>&1"


rule validate_data:
    input:
        manifest=f"{DATA}/fetch.json",
        raw=RAW,
    output:
        summary=f"{RES}/data_validation.json",
    params:
        code=code("validate"),
        cfg=cfg("validate"),
    conda:
        ENV_BASE
    log:
        f"{LOGS}/validate.log",
    benchmark:
        f"{BENCH}/validate.tsv"
    threads: cs_resources.threads(config, "validate_data")
    shell:
        "python -m carvana_seg validate --cfg {params.cfg:q} --raw {input.raw} --out {output.summary}"
        " --threads {threads} > {log} 2>&1"


rule folds:
    input:
        summary=f"{RES}/data_validation.json",
        raw=RAW,
    output:
        folds=f"{RES}/folds.csv",
    params:
        code=code("folds"),
        cfg=cfg("folds"),
    conda:
        ENV_BASE
    log:
        f"{LOGS}/folds.log",
    shell:
        "python -m carvana_seg folds --cfg {params.cfg:q} --raw {input.raw} --out {output.folds} > {log} 2>&1"


rule resize_cache:
    input:
        summary=f"{RES}/data_validation.json",
        raw=RAW,
    output:
        images=f"{DATA}/cache/{{size}}/images.npy",
        masks=f"{DATA}/cache/{{size}}/masks.npy",
        ids=f"{DATA}/cache/{{size}}/ids.txt",
    params:
        code=code("resize"),
        cfg=cfg("resize"),
    wildcard_constraints:
        size=r"\d+x\d+",
    conda:
        ENV_BASE
    log:
        f"{LOGS}/resize_{{size}}.log",
    benchmark:
        f"{BENCH}/resize_{{size}}.tsv"
    threads: cs_resources.threads(config, "resize_cache")
    shell:
        "python -m carvana_seg resize --cfg {params.cfg:q} --raw {input.raw} --size {wildcards.size} --out $(dirname {output.images})"
        " --threads {threads} > {log} 2>&1"
