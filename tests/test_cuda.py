"""On a GPU: the influence scores computed on CUDA agree with the CPU's (skipped where there is no CUDA device).

Training is left out on purpose: ``msif.training`` minimises with its own L-BFGS on the CPU but with
``torch.optim.LBFGS`` on an accelerator, so the two devices land on slightly different optima.  The scores are
compared from the SAME trained parameters, moved to CUDA: what differs is only where the Hessian-vector products,
solves and gradients run.
"""

from __future__ import annotations

import pytest
import torch

from msif.experiments.registry import resolve_device
from msif.influence.multi_stage import multi_stage_influence
from msif.task.objectives import FinetuneObjective, PretrainObjective
from oracles import finetuned, tiny_problem

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible"),
]


def test_auto_device_is_cuda() -> None:
    assert resolve_device("auto").type == "cuda"


@pytest.mark.parametrize("solver", ["exact", "cg"])
@pytest.mark.parametrize("scenario, alpha", [("fixed", 0.0), ("updated", 0.5)])
def test_cuda_scores_match_cpu(scenario: str, alpha: float, solver: str) -> None:
    data, model, pt, pt_params, theta0 = tiny_problem()
    ft, ft_params = finetuned(model, data, pt_params[: model.w_spec.numel], theta0, scenario, alpha)
    cpu = multi_stage_influence(pt, pt_params, ft, ft_params, data.finetune_test, solver=solver)

    cuda = torch.device("cuda")
    dev = data.to(pt_params.dtype, cuda)
    pt_cuda = PretrainObjective(model, dev.pretrain, pt.l2)
    ft_cuda = FinetuneObjective(model, dev.finetune, ft.l2, ft.w_pt.to(cuda), scenario, alpha)
    gpu = multi_stage_influence(pt_cuda, pt_params.to(cuda), ft_cuda, ft_params.to(cuda), dev.finetune_test, solver=solver)

    assert gpu.scores.device.type == "cuda" and gpu.scores.dtype == torch.float64
    assert float(gpu.pretrain.residual.max()) < 1e-8
    scale = float(cpu.scores.abs().max())
    torch.testing.assert_close(gpu.scores.cpu(), cpu.scores, rtol=1e-7, atol=1e-9 * scale)
