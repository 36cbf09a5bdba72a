from msif.logs import job
from msif.steps.text import case_deletion_sets

with job(snakemake.log[0], snakemake.threads):
    case_deletion_sets(snakemake.params.cfg, snakemake.input.scores, snakemake.output.json)
