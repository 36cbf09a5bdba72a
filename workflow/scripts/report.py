from msif.logs import job
from msif.report import write_report

with job(snakemake.log[0], snakemake.threads):
    write_report(snakemake.params.config, snakemake.params.results, snakemake.output.html)
