from msif.logs import job
from msif.steps.validation import aggregate

with job(snakemake.log[0], snakemake.threads):
    i, o = snakemake.input, snakemake.output
    aggregate(snakemake.params.seeds, snakemake.params.bootstrap, i.leave_k_out, i.summary, i.lds,
                        o.leave_k_out, o.summary, o.lds)
