from msif import steps
from msif.logs import job

with job(snakemake.log[0], snakemake.threads):
    steps.run_lds_subsets(snakemake.params.cfg, snakemake.input.data, snakemake.output.json)
