# Data stages: fetch (kaggle | local | synthetic) -> validate -> folds -> resize cache.
# data/<name>/raw is a directory output of fetch and a declared input of every rule that reads it (no rule reads a
# file it does not declare: the DAG runs without a shared filesystem, through a storage provider, docs/cluster.md).


rule fetch:
    output:
        **truth_output(),
        manifest=f"{DATA}/fetch.json",
        raw=directory(RAW),
    log:
        f"{LOGS}/fetch.log",
    benchmark:
        f"{BENCH}/fetch.tsv"
    conda:
        ENV_BASE
    threads: cs_resources.threads(config, "fetch")
    params:
        code=code("fetch"),
        cfg=cfg("fetch"),
    shell:
        "python -m carvana_seg fetch --cfg {params.cfg:q} --out {output.raw} --manifest {output.manifest}"
        " --threads {threads} > {log} 2>&1"


rule validate_data:
    input:
        manifest=f"{DATA}/fetch.json",
        raw=RAW,
    output:
        summary=f"{RES}/data_validation.json",
    log:
        f"{LOGS}/validate.log",
    benchmark:
        f"{BENCH}/validate.tsv"
    conda:
        ENV_BASE
    threads: cs_resources.threads(config, "validate_data")
    params:
        code=code("validate"),
        cfg=cfg("validate"),
    shell:
        "python -m carvana_seg validate --cfg {params.cfg:q} --raw {input.raw} --out {output.summary}"
        " --threads {threads} > {log} 2>&1"


rule folds:
    input:
        summary=f"{RES}/data_validation.json",
        raw=RAW,
    output:
        folds=f"{RES}/folds.csv",
    log:
        f"{LOGS}/folds.log",
    conda:
        ENV_BASE
    params:
        code=code("folds"),
        cfg=cfg("folds"),
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
    log:
        f"{LOGS}/resize_{{size}}.log",
    benchmark:
        f"{BENCH}/resize_{{size}}.tsv"
    wildcard_constraints:
        size=r"\d+x\d+",
    conda:
        ENV_BASE
    threads: cs_resources.threads(config, "resize_cache")
    params:
        code=code("resize"),
        cfg=cfg("resize"),
    shell:
        "python -m carvana_seg resize --cfg {params.cfg:q} --raw {input.raw} --size {wildcards.size} --out $(dirname {output.images})"
        " --threads {threads} > {log} 2>&1"
