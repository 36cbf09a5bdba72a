from msif.logs import job
from msif.steps.train import pretrain

with job(snakemake.log[0], snakemake.threads):
    pretrain(snakemake.params.cfg, snakemake.input.data, snakemake.output.pt)
