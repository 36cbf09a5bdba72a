from msif.logs import job
from msif.steps.validation import noise_floor

with job(snakemake.log[0], snakemake.threads):
    i = snakemake.input
    noise_floor(snakemake.params.cfg, snakemake.wildcards.scenario, i.data, i.pretrain, i.finetune, snakemake.output.csv)
