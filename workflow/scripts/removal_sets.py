from msif.logs import job
from msif.steps.validation import removal_sets

with job(snakemake.log[0], snakemake.threads):
    removal_sets(snakemake.params.cfg, snakemake.input.scores, snakemake.output.json)
