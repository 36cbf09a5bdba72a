from msif.logs import job
from msif.steps.influence import scores_shard

with job(snakemake.log[0], snakemake.threads):
    i, w = snakemake.input, snakemake.wildcards
    scores_shard(snakemake.params.cfg, w.scenario, w.solver, i.data, i.pretrain, i.pretrain_ihvp, snakemake.output.pt,
                     shard=int(w.shard))
