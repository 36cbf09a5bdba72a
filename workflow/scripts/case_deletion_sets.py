from msif import text_steps
from msif.logs import job

with job(snakemake.log[0], snakemake.threads):
    text_steps.run_case_sets(snakemake.params.cfg, snakemake.input.scores, snakemake.output.json)
