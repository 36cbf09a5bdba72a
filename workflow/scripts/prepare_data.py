from msif import steps
from msif.logs import job

with job(snakemake.log[0], snakemake.threads):
    steps.prepare_data(snakemake.params.cfg, snakemake.output.pt)
