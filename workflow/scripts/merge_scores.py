from msif import steps
from msif.logs import job

with job(snakemake.log[0], snakemake.threads):
    w = snakemake.wildcards
    steps.run_merge_scores(snakemake.params.cfg, w.scenario, w.solver, list(snakemake.input.shards), snakemake.output.pt)
