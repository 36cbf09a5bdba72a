# The text experiment's TracIn part: an SGD finetuning run with checkpoints, every TracIn
# method's scores on the classifier's own training sentences, and case deletion retrained over seeds.
# Included by the Snakefile only when experiment == text.
TRACIN_KEYS = TRAIN_KEYS + ("tracin",)


rule tracin_train:
    input:
        data=rules.prepare_data.output.pt,
        pretrain=rules.pretrain.output.pt,
    output:
        pt=f"{RESULTS}/tracin/train.pt",
        meta=f"{RESULTS}/tracin/train.pt.json",
    log:
        f"{LOGS}/tracin/train.log",
    benchmark:
        f"{LOGS}/benchmarks/tracin_train.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
        gpu=0,
    params:
        cfg=cfg(*TRACIN_KEYS),
        version=VERSION,
    script:
        "../scripts/tracin_train.py"


rule tracin_scores:
    input:
        data=rules.prepare_data.output.pt,
        train=rules.tracin_train.output.pt,
    output:
        pt=f"{RESULTS}/tracin/scores.pt",
        meta=f"{RESULTS}/tracin/scores.pt.json",
    log:
        f"{LOGS}/tracin/scores.log",
    benchmark:
        f"{LOGS}/benchmarks/tracin_scores.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
        gpu=0,
    params:
        cfg=cfg(*TRACIN_KEYS),
        version=VERSION,
    script:
        "../scripts/tracin_scores.py"


rule case_deletion_sets:
    input:
        scores=rules.tracin_scores.output.pt,
    output:
        json=f"{RESULTS}/tracin/case_deletion_sets.json",
    log:
        f"{LOGS}/tracin/case_deletion_sets.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        cfg=cfg("seed", "tracin.ks"),
        version=VERSION,
    script:
        "../scripts/case_deletion_sets.py"


rule case_deletion_retrain:
    input:
        data=rules.prepare_data.output.pt,
        pretrain=rules.pretrain.output.pt,
        scores=rules.tracin_scores.output.pt,
        sets=rules.case_deletion_sets.output.json,
    output:
        csv=f"{RESULTS}/tracin/case_deletion/sgd_seed{{sgd_seed}}.csv",
    log:
        f"{LOGS}/tracin/case_deletion_sgd_seed{{sgd_seed}}.log",
    benchmark:
        f"{LOGS}/benchmarks/case_deletion_sgd_seed{{sgd_seed}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
        gpu=0,
    params:
        cfg=cfg(*TRACIN_KEYS),
        version=VERSION,
    script:
        "../scripts/case_deletion_retrain.py"


rule case_deletion_table:
    input:
        csv=expand(
            rules.case_deletion_retrain.output.csv,
            sgd_seed=config["tracin"]["seeds"],
            allow_missing=True,
        ),
    output:
        table=f"{RESULTS}/tracin/case_deletion.csv",
        summary=f"{RESULTS}/tracin/case_deletion_summary.csv",
    log:
        f"{LOGS}/tracin/case_deletion_table.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        cfg=cfg("seed", "tracin.seeds"),
        version=VERSION,
    script:
        "../scripts/case_deletion_table.py"
