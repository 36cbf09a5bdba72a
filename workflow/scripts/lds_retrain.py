from msif import steps
from msif.logs import job

with job(snakemake.log[0], snakemake.threads):
    i, w = snakemake.input, snakemake.wildcards
    steps.run_lds_retrain(snakemake.params.cfg, w.scenario, int(w.batch), i.data, i.pretrain, i.finetune, i.subsets, snakemake.output.csv)
