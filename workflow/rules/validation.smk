rule removal_sets:
    input:
        scores=f"{RESULTS}/influence/{{scenario}}/{config['validation']['reference_solver']}/scores.pt",
    output:
        json=f"{RESULTS}/validation/{{scenario}}/removal_sets.json",
    params:
        cfg=cfg(*SET_KEYS),
        version=VERSION,
    log:
        f"{LOGS}/validation/{{scenario}}_removal_sets.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../scripts/removal_sets.py"


rule retrain:
    input:
        data=rules.prepare_data.output.pt,
        pretrain=rules.pretrain.output.pt,
        finetune=rules.finetune.output.pt,
        sets=rules.removal_sets.output.json,
    output:
        csv=f"{RESULTS}/validation/{{scenario}}/retrain/batch{{batch}}.csv",
    params:
        cfg=cfg(*RETRAIN_KEYS),
        version=VERSION,
    log:
        f"{LOGS}/validation/{{scenario}}_retrain_batch{{batch}}.log",
    benchmark:
        f"{LOGS}/benchmarks/{{scenario}}_retrain_batch{{batch}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
        gpu=0,
    script:
        "../scripts/retrain.py"


rule noise_floor:
    input:
        data=rules.prepare_data.output.pt,
        pretrain=rules.pretrain.output.pt,
        finetune=rules.finetune.output.pt,
    output:
        csv=f"{RESULTS}/validation/{{scenario}}/noise/rep{{rep}}.csv",
    params:
        cfg=cfg(*RETRAIN_KEYS, "validation.noise_scale"),
        version=VERSION,
    log:
        f"{LOGS}/validation/{{scenario}}_noise_rep{{rep}}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
        gpu=0,
    script:
        "../scripts/noise_floor.py"


rule compare:
    input:
        scores=[scores_for(s).values() for s in config["scenarios"]],
        sets=expand(rules.removal_sets.output.json, scenario=config["scenarios"]),
        retrain=expand(
            rules.retrain.output.csv,
            scenario=config["scenarios"],
            batch=range(n_batches()),
        ),
        noise=expand(
            rules.noise_floor.output.csv,
            scenario=config["scenarios"],
            rep=range(config["validation"]["noise_repeats"]),
        ),
    output:
        leave_k_out=f"{RESULTS}/validation/leave_k_out.csv",
        summary=f"{RESULTS}/validation/summary.csv",
    params:
        scenarios=config["scenarios"],
        solvers=config["influence"]["solvers"],
        n_batches=n_batches(),
        noise_repeats=config["validation"]["noise_repeats"],
        version=VERSION,
    log:
        f"{LOGS}/validation/compare.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../scripts/compare.py"
