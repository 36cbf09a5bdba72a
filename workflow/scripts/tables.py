from msif.logs import job
from msif.report.tables import write_tables

with job(snakemake.log[0], snakemake.threads):
    write_tables(snakemake.input.summary, snakemake.params.alpha, snakemake.output.csv, snakemake.output.md)
