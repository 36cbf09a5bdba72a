rule removal_sets:
    input:
        scores=f"{RESULTS}/influence/{{scenario}}/{config['validation']['reference_solver']}/scores.pt",
    output:
        json=f"{RESULTS}/validation/{{scenario}}/removal_sets.json",
    log:
        f"{LOGS}/validation/{{scenario}}_removal_sets.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        cfg=cfg(*SET_KEYS),
        version=VERSION,
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
    log:
        f"{LOGS}/validation/{{scenario}}_retrain_batch{{batch}}.log",
    benchmark:
        f"{LOGS}/benchmarks/{{scenario}}_retrain_batch{{batch}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
        gpu=0,
    params:
        cfg=cfg(*RETRAIN_KEYS),
        version=VERSION,
    script:
        "../scripts/retrain.py"


rule noise_floor:
    input:
        data=rules.prepare_data.output.pt,
        pretrain=rules.pretrain.output.pt,
        finetune=rules.finetune.output.pt,
    output:
        csv=f"{RESULTS}/validation/{{scenario}}/noise.csv",
    log:
        f"{LOGS}/validation/{{scenario}}_noise.log",
    benchmark:
        f"{LOGS}/benchmarks/{{scenario}}_noise.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
        gpu=0,
    params:
        cfg=cfg(
            *RETRAIN_KEYS,
            "validation.noise_scale",
            "validation.noise_repeats",
            "validation.seed_noise_repeats",
        ),
        version=VERSION,
    script:
        "../scripts/noise_floor.py"


rule baselines:
    input:
        data=rules.prepare_data.output.pt,
        pretrain=rules.pretrain.output.pt,
        finetune=rules.finetune.output.pt,
        hessian=reference_hessian,
    output:
        pt=f"{RESULTS}/influence/{{scenario}}/baselines.pt",
        meta=f"{RESULTS}/influence/{{scenario}}/baselines.pt.json",
    log:
        f"{LOGS}/influence/{{scenario}}_baselines.log",
    benchmark:
        f"{LOGS}/benchmarks/{{scenario}}_baselines.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=0,
    params:
        cfg=cfg(
            *SOLVE_BASE,
            *arguments.solver_blocks(config["validation"]["reference_solver"]),
            "influence.batch_size",
            "validation.reference_solver",
        ),
        version=VERSION,
    script:
        "../scripts/baselines.py"


rule lds_subsets:
    input:
        data=rules.prepare_data.output.pt,
    output:
        json=f"{RESULTS}/validation/lds_subsets.json",
    log:
        f"{LOGS}/validation/lds_subsets.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        cfg=cfg("seed", "validation.lds"),
        version=VERSION,
    script:
        "../scripts/lds_subsets.py"


rule lds_retrain:
    input:
        data=rules.prepare_data.output.pt,
        pretrain=rules.pretrain.output.pt,
        finetune=rules.finetune.output.pt,
        subsets=rules.lds_subsets.output.json,
    output:
        csv=f"{RESULTS}/validation/{{scenario}}/lds/batch{{batch}}.csv",
    log:
        f"{LOGS}/validation/{{scenario}}_lds_batch{{batch}}.log",
    benchmark:
        f"{LOGS}/benchmarks/{{scenario}}_lds_batch{{batch}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
        gpu=0,
    params:
        cfg=cfg(
            *FINETUNE_KEYS,
            "influence.n_test",
            "retraining.max_iter",
            "validation.lds.grad_tol",
        ),
        version=VERSION,
    script:
        "../scripts/lds_retrain.py"


rule lds_cold:
    input:
        data=rules.prepare_data.output.pt,
        pretrain=rules.pretrain.output.pt,
        finetune=rules.finetune.output.pt,
        subsets=rules.lds_subsets.output.json,
    output:
        csv=f"{RESULTS}/validation/{{scenario}}/lds_cold/batch{{batch}}.csv",
    log:
        f"{LOGS}/validation/{{scenario}}_lds_cold_batch{{batch}}.log",
    benchmark:
        f"{LOGS}/benchmarks/{{scenario}}_lds_cold_batch{{batch}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
        gpu=0,
    params:
        cfg=cfg(
            *FINETUNE_KEYS,
            "influence.n_test",
            "retraining.max_iter",
            "validation.lds.grad_tol",
            "validation.lds.cold_seeds",
        ),
        version=VERSION,
    script:
        "../scripts/lds_cold.py"


rule compare:
    input:
        pretrain=rules.pretrain.output.pt,
        scratch=rules.scratch.output.json,
        finetune=expand(
            rules.finetune.output.pt, scenario=config["scenarios"], allow_missing=True
        ),
        scores=[scores_for(s).values() for s in config["scenarios"]],
        sets=expand(
            rules.removal_sets.output.json,
            scenario=config["scenarios"],
            allow_missing=True,
        ),
        retrain=expand(
            rules.retrain.output.csv,
            scenario=config["scenarios"],
            batch=range(n_batches()),
            allow_missing=True,
        ),
        noise=noise_csvs(),
        baselines=expand(
            rules.baselines.output.pt,
            scenario=config["scenarios"] if BASELINES else [],
            allow_missing=True,
        ),
        lds_subsets=rules.lds_subsets.output.json if LDS["n_subsets"] else [],
        lds=expand(
            rules.lds_retrain.output.csv,
            scenario=config["scenarios"],
            batch=range(n_lds_batches()),
            allow_missing=True,
        ),
        lds_cold=expand(
            rules.lds_cold.output.csv,
            scenario=config["scenarios"],
            batch=range(n_lds_batches() if LDS.get("cold_seeds", 0) else 0),
            allow_missing=True,
        ),
        group=expand(
            rules.group_predictions.output.pt,
            scenario=config["scenarios"] if GROUP else [],
            allow_missing=True,
        ),
    output:
        leave_k_out=f"{RESULTS}/validation/leave_k_out.csv",
        summary=f"{RESULTS}/validation/summary.csv",
        lds=f"{RESULTS}/validation/lds.csv",
    log:
        f"{LOGS}/validation/compare.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        cfg=cfg("seed", "validation"),
        scenarios=config["scenarios"],
        version=VERSION,
    script:
        "../scripts/compare.py"


rule aggregate:
    input:
        leave_k_out=expand(rules.compare.output.leave_k_out, seed=SEEDS),
        summary=expand(rules.compare.output.summary, seed=SEEDS),
        lds=expand(rules.compare.output.lds, seed=SEEDS),
    output:
        leave_k_out=f"{RUN}/validation/leave_k_out.csv",
        summary=report(
            f"{RUN}/validation/summary.csv",
            caption="../report/summary.rst",
            category="Validation",
        ),
        lds=f"{RUN}/validation/lds.csv",
    log:
        f"{RUN_LOGS}/validation/aggregate.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        bootstrap=config["validation"]["bootstrap"],
        seeds=SEEDS,
        version=VERSION,
    script:
        "../scripts/aggregate.py"
