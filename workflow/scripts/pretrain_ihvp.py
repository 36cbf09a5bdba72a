from msif import steps
from msif.logs import job

with job(snakemake.log[0], snakemake.threads):
    i, w = snakemake.input, snakemake.wildcards
    hessian = i.hessian if i.hessian else None
    steps.run_pretrain_ihvp(
        snakemake.params.cfg, w.scenario, w.solver, i.data, i.pretrain, i.finetune, i.finetune_ihvp, hessian, snakemake.output.pt
    )
