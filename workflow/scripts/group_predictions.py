from msif.logs import job
from msif.steps.group import group_predictions

with job(snakemake.log[0], snakemake.threads):
    i = snakemake.input
    group_predictions(snakemake.params.cfg, snakemake.wildcards.scenario, i.data, i.pretrain, i.finetune, i.hessian, i.sets,
                      i.lds_subsets or None, snakemake.output.pt, scores_path=i.scores)
