from msif.logs import job
from msif.steps.report import report

with job(snakemake.log[0], snakemake.threads):
    i = snakemake.input
    report(snakemake.params.cfg, snakemake.params.solvers, i.summary, i.leave_k_out, i.lds, i.table, i.data[0], i.pretrain[0],
           list(i.finetune), list(i.scores), list(i.finetune_ihvp), list(i.pretrain_ihvp), list(i.tracin), snakemake.output.html,
           group=list(i.group), seeds=snakemake.params.seeds)
