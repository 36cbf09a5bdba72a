rule finetune_ihvp:
    input:
        data=rules.prepare_data.output.pt,
        pretrain=rules.pretrain.output.pt,
        finetune=rules.finetune.output.pt,
    output:
        pt=f"{RESULTS}/influence/{{scenario}}/{{solver}}/finetune_ihvp.pt",
        meta=f"{RESULTS}/influence/{{scenario}}/{{solver}}/finetune_ihvp.pt.json",
    log:
        f"{LOGS}/influence/{{scenario}}_{{solver}}_finetune_ihvp.log",
    benchmark:
        f"{LOGS}/benchmarks/{{scenario}}_{{solver}}_finetune_ihvp.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=0,
    params:
        cfg=solve_params(),
        version=VERSION,
    script:
        "../scripts/finetune_ihvp.py"


rule pretrain_hessian:
    input:
        data=rules.prepare_data.output.pt,
        pretrain=rules.pretrain.output.pt,
    output:
        pt=f"{RESULTS}/influence/pretrain_hessian.pt",
        meta=f"{RESULTS}/influence/pretrain_hessian.pt.json",
    log:
        f"{LOGS}/influence/pretrain_hessian.log",
    benchmark:
        f"{LOGS}/benchmarks/pretrain_hessian.tsv"
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=0,
    params:
        cfg=cfg(*TRAIN_KEYS, "influence.damping", "influence.curvature"),
        version=VERSION,
    script:
        "../scripts/pretrain_hessian.py"


rule pretrain_ihvp:
    input:
        data=rules.prepare_data.output.pt,
        pretrain=rules.pretrain.output.pt,
        finetune=rules.finetune.output.pt,
        finetune_ihvp=rules.finetune_ihvp.output.pt,
        hessian=hessian_input,
    output:
        pt=f"{RESULTS}/influence/{{scenario}}/{{solver}}/pretrain_ihvp.pt",
        meta=f"{RESULTS}/influence/{{scenario}}/{{solver}}/pretrain_ihvp.pt.json",
    log:
        f"{LOGS}/influence/{{scenario}}_{{solver}}_pretrain_ihvp.log",
    benchmark:
        f"{LOGS}/benchmarks/{{scenario}}_{{solver}}_pretrain_ihvp.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=0,
    params:
        cfg=solve_params(),
        version=VERSION,
    script:
        "../scripts/pretrain_ihvp.py"


rule scores_shard:
    input:
        data=rules.prepare_data.output.pt,
        pretrain=rules.pretrain.output.pt,
        pretrain_ihvp=rules.pretrain_ihvp.output.pt,
    output:
        pt=f"{RESULTS}/influence/{{scenario}}/{{solver}}/scores_shard{{shard}}.pt",
        meta=f"{RESULTS}/influence/{{scenario}}/{{solver}}/scores_shard{{shard}}.pt.json",
    log:
        f"{LOGS}/influence/{{scenario}}_{{solver}}_scores_shard{{shard}}.log",
    benchmark:
        f"{LOGS}/benchmarks/{{scenario}}_{{solver}}_scores_shard{{shard}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=0,
    params:
        cfg=solve_params(
            "influence.batch_size", "influence.shards", "influence.query_rank"
        ),
        version=VERSION,
    script:
        "../scripts/scores_shard.py"


rule scores:
    input:
        shards=score_shards,
    output:
        pt=f"{RESULTS}/influence/{{scenario}}/{{solver}}/scores.pt",
        meta=f"{RESULTS}/influence/{{scenario}}/{{solver}}/scores.pt.json",
    log:
        f"{LOGS}/influence/{{scenario}}_{{solver}}_scores.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
        gpu=0,
    params:
        cfg=solve_params("influence.batch_size", "influence.query_rank"),
        version=VERSION,
    script:
        "../scripts/scores.py"
