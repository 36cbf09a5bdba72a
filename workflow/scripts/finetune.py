from msif import steps
from msif.logs import job

with job(snakemake.log[0], snakemake.threads):
    i = snakemake.input
    steps.finetune(snakemake.params.cfg, snakemake.wildcards.scenario, i.data, i.pretrain, snakemake.output.pt)
