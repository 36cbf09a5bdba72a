rule report:
    input:
        summary=rules.compare.output.summary,
        leave_k_out=rules.compare.output.leave_k_out,
        data=rules.prepare_data.output.pt,
        scores=[scores_for(s).values() for s in config["scenarios"]],
        meta=[
            expand(rules.finetune.output.meta, scenario=config["scenarios"]),
            rules.pretrain.output.meta,
            expand(
                rules.pretrain_ihvp.output.meta,
                scenario=config["scenarios"],
                solver=config["influence"]["solvers"],
            ),
            expand(
                rules.finetune_ihvp.output.meta,
                scenario=config["scenarios"],
                solver=config["influence"]["solvers"],
            ),
        ],
        noise=expand(
            rules.noise_floor.output.csv,
            scenario=config["scenarios"],
            rep=range(config["validation"]["noise_repeats"]),
        ),
    output:
        html=f"{RESULTS}/report.html",
    log:
        f"{LOGS}/report.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        config=config,
        version=VERSION,
    script:
        "../scripts/report.py"
