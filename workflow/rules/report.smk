rule report:
    input:
        summary=rules.aggregate.output.summary,
        leave_k_out=rules.aggregate.output.leave_k_out,
        table=f"{RUN}/tables/paper_table.md",
        # the examples, diagnostics and noise of the first seed are drawn
        data=expand(rules.prepare_data.output.pt, seed=SEEDS[0]),
        scores=expand(
            [f for s in config["scenarios"] for f in scores_for(s).values()],
            seed=SEEDS[0],
        ),
        meta=[
            expand(
                rules.finetune.output.meta,
                scenario=config["scenarios"],
                seed=SEEDS[0],
            ),
            expand(rules.pretrain.output.meta, seed=SEEDS[0]),
            expand(
                rules.pretrain_ihvp.output.meta,
                scenario=config["scenarios"],
                solver=config["influence"]["solvers"],
                seed=SEEDS[0],
            ),
            expand(
                rules.finetune_ihvp.output.meta,
                scenario=config["scenarios"],
                solver=config["influence"]["solvers"],
                seed=SEEDS[0],
            ),
        ],
        noise=expand(noise_csvs(), seed=SEEDS[0]),
        tracin=expand(TRACIN_TARGETS, seed=SEEDS[0]),  # text only
    output:
        html=f"{RUN}/report.html",
    log:
        f"{RUN_LOGS}/report.log",
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


rule tables:
    input:
        summary=rules.aggregate.output.summary,
    output:
        csv=f"{RUN}/tables/summary.csv",
        md=f"{RUN}/tables/paper_table.md",
    log:
        f"{RUN_LOGS}/tables.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        alpha=config["finetune"]["alpha"],
        version=VERSION,
    script:
        "../scripts/tables.py"
