from msif import steps
from msif.logs import job

with job(snakemake.log[0], snakemake.threads):
    i, w = snakemake.input, snakemake.wildcards
    steps.run_finetune_ihvp(snakemake.params.cfg, w.scenario, w.solver, i.data, i.pretrain, i.finetune, snakemake.output.pt)
