from msif.logs import job
from msif.steps.text import case_deletion_retrain

with job(snakemake.log[0], snakemake.threads):
    i, w = snakemake.input, snakemake.wildcards
    case_deletion_retrain(snakemake.params.cfg, int(w.sgd_seed), i.data, i.pretrain, i.scores, i.sets, snakemake.output.csv)
