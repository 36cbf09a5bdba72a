from msif.logs import job
from msif.steps.influence import finetune_ihvp

with job(snakemake.log[0], snakemake.threads):
    i, w = snakemake.input, snakemake.wildcards
    finetune_ihvp(snakemake.params.cfg, w.scenario, w.solver, i.data, i.pretrain, i.finetune, snakemake.output.pt)
