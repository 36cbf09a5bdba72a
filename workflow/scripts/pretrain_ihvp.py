from msif.logs import job
from msif.steps.influence import pretrain_ihvp

with job(snakemake.log[0], snakemake.threads):
    i, w = snakemake.input, snakemake.wildcards
    hessian = i.hessian if i.hessian else None
    pretrain_ihvp(
        snakemake.params.cfg, w.scenario, w.solver, i.data, i.pretrain, i.finetune, i.finetune_ihvp, hessian, snakemake.output.pt
    )
