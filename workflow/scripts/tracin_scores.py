from msif.logs import job
from msif.steps.text import tracin_scores

with job(snakemake.log[0], snakemake.threads):
    i = snakemake.input
    tracin_scores(snakemake.params.cfg, i.data, i.train, snakemake.output.pt)
