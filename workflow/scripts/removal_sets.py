from msif import steps
from msif.logs import job

with job(snakemake.log[0], snakemake.threads):
    steps.run_removal_sets(snakemake.params.cfg, snakemake.input.scores, snakemake.output.json)
