rule report:
    input:
        summary=rules.aggregate.output.summary,
        leave_k_out=rules.aggregate.output.leave_k_out,
        lds=rules.aggregate.output.lds,
        table=f"{RUN}/tables/paper_table.md",
        # examples and diagnostics are drawn from the first seed
        data=expand(rules.prepare_data.output.pt, seed=SEEDS[0]),
        pretrain=expand(rules.pretrain.output.pt, seed=SEEDS[0]),
        finetune=expand(
            rules.finetune.output.pt, scenario=config["scenarios"], seed=SEEDS[0]
        ),
        scores=expand(
            rules.scores.output.pt,
            scenario=config["scenarios"],
            solver=config["validation"]["reference_solver"],
            seed=SEEDS[0],
        ),
        finetune_ihvp=expand(
            rules.finetune_ihvp.output.pt,
            scenario=config["scenarios"],
            solver=config["influence"]["solvers"],
            seed=SEEDS[0],
        ),
        pretrain_ihvp=expand(
            rules.pretrain_ihvp.output.pt,
            scenario=config["scenarios"],
            solver=config["influence"]["solvers"],
            seed=SEEDS[0],
        ),
        tracin=expand(TRACIN_REPORT, seed=SEEDS[0]),  # text only
        group=(
            expand(
                rules.group_predictions.output.meta,
                scenario=config["scenarios"],
                seed=SEEDS,
            )
            if GROUP
            else []
        ),
    output:
        html=report(
            f"{RUN}/report.html", caption="../report/report.rst", category="Report"
        ),
    log:
        f"{RUN_LOGS}/report.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        cfg=REPORT_CONFIG,
        solvers=config["influence"]["solvers"],
        seeds=SEEDS,
        version=VERSION,
    script:
        "../scripts/report.py"


rule tables:
    input:
        summary=rules.aggregate.output.summary,
    output:
        csv=f"{RUN}/tables/summary.csv",
        md=report(
            f"{RUN}/tables/paper_table.md",
            caption="../report/tables.rst",
            category="Tables",
        ),
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
