from msif import steps
from msif.logs import job

with job(snakemake.log[0], snakemake.threads):
    i, w = snakemake.input, snakemake.wildcards
    steps.run_scores(snakemake.params.cfg, w.scenario, w.solver, i.data, i.pretrain, i.pretrain_ihvp, snakemake.output.pt,
                     shard=int(w.shard))
