from msif.logs import job
from msif.steps.train import scratch

with job(snakemake.log[0], snakemake.threads):
    scratch(snakemake.params.cfg, snakemake.input.data, snakemake.output.json)
