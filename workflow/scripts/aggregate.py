from msif import steps
from msif.logs import job

with job(snakemake.log[0], snakemake.threads):
    i, o = snakemake.input, snakemake.output
    steps.run_aggregate(snakemake.params.seeds, snakemake.params.bootstrap, i.leave_k_out, i.summary, i.lds,
                        o.leave_k_out, o.summary, o.lds)
