from pathlib import Path

from msif.logs import job
from msif.report.page import write_report

with job(snakemake.log[0], snakemake.threads):
    run = Path(snakemake.input.summary).parents[1]  # results/<run>/validation/summary.csv
    write_report(snakemake.params.config, run, snakemake.output.html)
