"""The optimizer choice of the training loop: the fast kernel makes the same AdamW update."""

import argparse

import pytest
import torch

from hf_ddm.training.optim import make_optimizer


def _args(impl):
    return argparse.Namespace(optimizer_impl=impl, adam_beta1=0.9, adam_beta2=0.99, adam_weight_decay=1e-2,
                              adam_epsilon=1e-8)


def _run(impl, steps=5):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.SiLU(), torch.nn.Linear(16, 3))
    opt = make_optimizer(net.parameters(), _args(impl), lr=1e-2)
    x, y = torch.randn(32, 8), torch.randn(32, 3)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        opt.step()
    return opt, torch.cat([p.detach().flatten() for p in net.parameters()])


def test_auto_is_fused_on_cpu_and_matches_the_reference_update():
    opt, fused = _run("auto")
    assert opt.param_groups[0]["fused"] is True
    _, loop = _run("for-loop")
    _, foreach = _run("foreach")
    start = _run("for-loop", steps=0)[1]
    assert not torch.equal(loop, start)  # the parameters did move
    torch.testing.assert_close(fused, loop, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(foreach, loop, rtol=1e-5, atol=1e-6)


def test_unknown_impl_is_named():
    with pytest.raises(ValueError, match="--optimizer_impl"):
        make_optimizer([torch.nn.Parameter(torch.zeros(2))], _args("adamax"), lr=1e-3)
