from msif import steps
from msif.logs import job

with job(snakemake.log[0], snakemake.threads):
    steps.run_pretrain_hessian(snakemake.params.cfg, snakemake.input.data, snakemake.input.pretrain, snakemake.output.pt)
