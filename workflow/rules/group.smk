# multi_stage_group (influence.group, method.md "Group removals"): chord-Newton predictions of every removal
# set and LDS subset through both stages, scored by rule compare beside first order on the same sets.
GROUP = config["influence"].get("group", {}).get("enabled", False)


rule group_predictions:
    input:
        data=rules.prepare_data.output.pt,
        pretrain=rules.pretrain.output.pt,
        finetune=rules.finetune.output.pt,
        hessian=rules.pretrain_hessian.output.pt,
        scores=f"{RESULTS}/influence/{{scenario}}/{config['validation']['reference_solver']}/scores.pt",
        sets=f"{RESULTS}/validation/{{scenario}}/removal_sets.json",
        lds_subsets=(
            f"{RESULTS}/validation/lds_subsets.json"
            if config["validation"]["lds"]["n_subsets"]
            else []
        ),
    output:
        pt=f"{RESULTS}/influence/{{scenario}}/group.pt",
        meta=f"{RESULTS}/influence/{{scenario}}/group.pt.json",
    log:
        f"{LOGS}/influence/{{scenario}}_group_predictions.log",
    benchmark:
        f"{LOGS}/benchmarks/{{scenario}}_group_predictions.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=0,
    params:
        cfg=cfg(*SOLVE_BASE, "influence.group", "influence.batch_size"),
        version=VERSION,
    script:
        "../scripts/group_predictions.py"
