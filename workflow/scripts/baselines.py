from msif.logs import job
from msif.steps.validation import baselines

with job(snakemake.log[0], snakemake.threads):
    i = snakemake.input
    hessian = i.hessian if i.hessian else None
    baselines(snakemake.params.cfg, snakemake.wildcards.scenario, i.data, i.pretrain, i.finetune, hessian, snakemake.output.pt)
