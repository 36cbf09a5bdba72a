from msif.logs import job
from msif.steps.text import case_deletion_table

with job(snakemake.log[0], snakemake.threads):
    o = snakemake.output
    case_deletion_table(snakemake.params.cfg, list(snakemake.input.csv), o.table, o.summary)
