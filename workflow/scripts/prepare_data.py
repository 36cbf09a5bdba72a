from msif.logs import job
from msif.steps.train import prepare_data

with job(snakemake.log[0], snakemake.threads):
    # n_test is checked here but is not a param: changing it must not rerun the data (and all after it)
    prepare_data(snakemake.params.cfg, snakemake.output.pt, n_test=snakemake.config["influence"]["n_test"])
