from msif.logs import job
from msif.steps.validation import lds_cold

with job(snakemake.log[0], snakemake.threads):
    i, w = snakemake.input, snakemake.wildcards
    lds_cold(snakemake.params.cfg, w.scenario, int(w.batch), i.data, i.pretrain, i.finetune, i.subsets, snakemake.output.csv)
