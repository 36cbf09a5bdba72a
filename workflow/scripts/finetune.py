from msif.logs import job
from msif.steps.train import finetune

with job(snakemake.log[0], snakemake.threads):
    i = snakemake.input
    finetune(snakemake.params.cfg, snakemake.wildcards.scenario, i.data, i.pretrain, snakemake.output.pt)
