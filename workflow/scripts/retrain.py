from msif.logs import job
from msif.steps.validation import retrain

with job(snakemake.log[0], snakemake.threads):
    i, w = snakemake.input, snakemake.wildcards
    retrain(snakemake.params.cfg, w.scenario, int(w.batch), i.data, i.pretrain, i.finetune, i.sets, snakemake.output.csv)
