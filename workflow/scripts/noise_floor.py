from msif.logs import job
from msif.steps.validation import noise_floor

with job(snakemake.log[0], snakemake.threads):
    i, w = snakemake.input, snakemake.wildcards
    noise_floor(snakemake.params.cfg, w.scenario, int(w.rep), i.data, i.pretrain, i.finetune, snakemake.output.csv, w.kind)
