rule prepare_data:
    output:
        pt=f"{RESULTS}/data/splits.pt",
        meta=f"{RESULTS}/data/splits.pt.json",
    log:
        f"{LOGS}/prepare_data.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        cfg=cfg("seed", "experiment", "plugin", "data"),
        version=VERSION,
    script:
        "../scripts/prepare_data.py"


rule pretrain:
    input:
        data=rules.prepare_data.output.pt,
    output:
        pt=f"{RESULTS}/train/pretrain.pt",
        meta=f"{RESULTS}/train/pretrain.pt.json",
    log:
        f"{LOGS}/pretrain.log",
    benchmark:
        f"{LOGS}/benchmarks/pretrain.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
        gpu=0,
    params:
        cfg=cfg(*TRAIN_KEYS),
        version=VERSION,
    script:
        "../scripts/pretrain.py"


rule finetune:
    input:
        data=rules.prepare_data.output.pt,
        pretrain=rules.pretrain.output.pt,
    output:
        pt=f"{RESULTS}/train/finetune_{{scenario}}.pt",
        meta=f"{RESULTS}/train/finetune_{{scenario}}.pt.json",
    log:
        f"{LOGS}/finetune_{{scenario}}.log",
    benchmark:
        f"{LOGS}/benchmarks/finetune_{{scenario}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
        gpu=0,
    params:
        cfg=cfg(*FINETUNE_KEYS),
        version=VERSION,
    script:
        "../scripts/finetune.py"


rule scratch:
    input:
        data=rules.prepare_data.output.pt,
    output:
        json=f"{RESULTS}/train/scratch.json",
    log:
        f"{LOGS}/scratch.log",
    benchmark:
        f"{LOGS}/benchmarks/scratch.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
        gpu=0,
    params:
        cfg=cfg(*FINETUNE_KEYS),
        version=VERSION,
    script:
        "../scripts/scratch.py"
