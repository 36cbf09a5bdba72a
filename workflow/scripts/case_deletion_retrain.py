from msif import text_steps
from msif.logs import job

with job(snakemake.log[0], snakemake.threads):
    i, w = snakemake.input, snakemake.wildcards
    text_steps.run_case_retrain(snakemake.params.cfg, int(w.sgd_seed), i.data, i.pretrain, i.scores, i.sets, snakemake.output.csv)
