from msif.logs import job
from msif.steps.text import tracin_train

with job(snakemake.log[0], snakemake.threads):
    i = snakemake.input
    tracin_train(snakemake.params.cfg, i.data, i.pretrain, snakemake.output.pt)
