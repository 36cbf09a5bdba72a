# msif: multi-stage influence, from pretraining data to finetuned predictions, validated by retraining.
# The DAG: data -> pretrain -> finetune -> finetune_ihvp -> pretrain_hessian/pretrain_ihvp -> scores
#          -> removal_sets -> retrain (fan-out) + noise_floor + lds -> compare      (each once per seed)
#          -> aggregate (pooled over seeds) -> tables, report
# Helpers and wildcard constraints: workflow/rules/common.smk; rule X runs workflow/scripts/X.py -> msif.steps.<smk>.X.


# The default experiment, unless --configfile names another: a given config file is used alone
# (not merged over the default), so a key missing from it is reported instead of silently filled in.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/influence.smk"
include: "workflow/rules/group.smk"
include: "workflow/rules/validation.smk"
include: "workflow/rules/report.smk"


if config["experiment"] == "text":

    include: "workflow/rules/text.smk"


rule all:
    default_target: True
    input:
        f"{RUN}/report.html",
        f"{RUN}/validation/summary.csv",
        expand(TRACIN_TARGETS, seed=SEEDS),
