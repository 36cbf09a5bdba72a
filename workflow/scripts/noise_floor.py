from msif import steps
from msif.logs import job

with job(snakemake.log[0], snakemake.threads):
    i, w = snakemake.input, snakemake.wildcards
    steps.run_noise(snakemake.params.cfg, w.scenario, int(w.rep), i.data, i.pretrain, i.finetune, snakemake.output.csv, w.kind)
