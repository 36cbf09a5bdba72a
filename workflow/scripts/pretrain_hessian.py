from msif.logs import job
from msif.steps.influence import pretrain_hessian

with job(snakemake.log[0], snakemake.threads):
    pretrain_hessian(snakemake.params.cfg, snakemake.input.data, snakemake.input.pretrain, snakemake.output.pt)
