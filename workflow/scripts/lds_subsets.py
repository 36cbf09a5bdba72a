from msif.logs import job
from msif.steps.validation import lds_subsets

with job(snakemake.log[0], snakemake.threads):
    lds_subsets(snakemake.params.cfg, snakemake.input.data, snakemake.output.json)
