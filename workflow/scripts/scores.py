from msif.logs import job
from msif.steps.influence import scores

with job(snakemake.log[0], snakemake.threads):
    w = snakemake.wildcards
    scores(snakemake.params.cfg, w.scenario, w.solver, list(snakemake.input.shards), snakemake.output.pt)
