from msif import text_steps
from msif.logs import job

with job(snakemake.log[0], snakemake.threads):
    o = snakemake.output
    text_steps.run_case_table(snakemake.params.cfg, list(snakemake.input.csv), o.table, o.summary)
