# Data stages: fetch (kaggle | local | synthetic) -> validate -> folds -> resize cache.


rule fetch:
    output:
        manifest=f"{DATA}/fetch.json",
    params:
        code=code("fetch"),
        cfg=cfg("fetch"),
        raw=RAW,
    conda:
        ENV_BASE
    log:
        f"{LOGS}/fetch.log",
    benchmark:
        f"{BENCH}/fetch.tsv"
    threads: cs_resources.threads(config, "fetch")
    shell:
        "python -m carvana_seg fetch --cfg {params.cfg:q} --out {params.raw} --manifest {output.manifest}"
        " --threads {threads} > {log} 2>&1"


rule validate_data:
    input:
        manifest=f"{DATA}/fetch.json",
    output:
        summary=f"{RES}/data_validation.json",
    params:
        code=code("validate"),
        cfg=cfg("validate"),
        raw=RAW,
    conda:
        ENV_BASE
    log:
        f"{LOGS}/validate.log",
    benchmark:
        f"{BENCH}/validate.tsv"
    threads: cs_resources.threads(config, "validate_data")
    shell:
        "python -m carvana_seg validate --cfg {params.cfg:q} --raw {params.raw} --out {output.summary}"
        " --threads {threads} > {log} 2>&1"


rule folds:
    input:
        summary=f"{RES}/data_validation.json",
    output:
        folds=f"{RES}/folds.csv",
    params:
        code=code("folds"),
        cfg=cfg("folds"),
        raw=RAW,
    conda:
        ENV_BASE
    log:
        f"{LOGS}/folds.log",
    shell:
        "python -m carvana_seg folds --cfg {params.cfg:q} --raw {params.raw} --out {output.folds} > {log} 2>&1"


rule resize_cache:
    input:
        summary=f"{RES}/data_validation.json",
    output:
        images=f"{DATA}/cache/{{size}}/images.npy",
        masks=f"{DATA}/cache/{{size}}/masks.npy",
        ids=f"{DATA}/cache/{{size}}/ids.txt",
    params:
        code=code("resize"),
        cfg=cfg("resize"),
        raw=RAW,
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
        "python -m carvana_seg resize --cfg {params.cfg:q} --raw {params.raw} --size {wildcards.size} --out $(dirname {output.images})"
        " --threads {threads} > {log} 2>&1"
