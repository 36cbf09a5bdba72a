from msif import text_steps
from msif.logs import job

with job(snakemake.log[0], snakemake.threads):
    i = snakemake.input
    text_steps.run_tracin_train(snakemake.params.cfg, i.data, i.pretrain, snakemake.output.pt)
