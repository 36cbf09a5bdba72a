from msif.logs import job
from msif.steps.report import tables

with job(snakemake.log[0], snakemake.threads):
    tables(snakemake.input.summary, snakemake.params.alpha, snakemake.output.csv, snakemake.output.md)
