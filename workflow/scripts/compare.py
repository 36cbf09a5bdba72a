from pathlib import Path

from msif.logs import job
from msif.steps.validation import compare

with job(snakemake.log[0], snakemake.threads):
    i, scenarios = snakemake.input, snakemake.params.scenarios
    of = lambda files, s: [f for f in files if f"/{s}/" in f]  # noqa: E731
    compare(
        snakemake.params.cfg,
        scores_paths={s: {Path(f).parent.name: f for f in of(i.scores, s)} for s in scenarios},
        sets_paths={s: of(i.sets, s)[0] for s in scenarios},
        retrain_paths={s: of(i.retrain, s) for s in scenarios},
        noise_paths={s: of(i.noise, s) for s in scenarios},
        baselines_paths={s: of(i.baselines, s)[0] for s in scenarios} if i.baselines else None,
        lds_subsets_path=i.lds_subsets or None,
        lds_paths={s: of(i.lds, s) for s in scenarios},
        lds_cold_paths={s: of(i.lds_cold, s) for s in scenarios},
        group_paths={s: of(i.group, s)[0] for s in scenarios} if i.group else None,
        leave_k_out_out=snakemake.output.leave_k_out,
        summary_out=snakemake.output.summary,
        lds_out=snakemake.output.lds,
        pretrain_path=i.pretrain,
        scratch_path=i.scratch,
        finetune_paths=dict(zip(scenarios, i.finetune, strict=True)),
    )
