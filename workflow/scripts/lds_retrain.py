from msif.logs import job
from msif.steps.validation import lds_retrain

with job(snakemake.log[0], snakemake.threads):
    i, w = snakemake.input, snakemake.wildcards
    lds_retrain(snakemake.params.cfg, w.scenario, int(w.batch), i.data, i.pretrain, i.finetune, i.subsets, snakemake.output.csv)
