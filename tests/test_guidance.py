"""CFG++ against diffusers' own DDIM step."""

from __future__ import annotations

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from metamergen.pipeline.guidance import cfgpp_ddim_step, needs_unconditional
from metamergen.testing import tiny_scheduler


def setup():
    sched = tiny_scheduler()
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x, eu, ec = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    return sched, x, eu, ec


@pytest.mark.parametrize("i", [0, 5, 9])  # first, middle and last step (final alpha)
def test_cfgpp_without_guidance_gap_is_plain_ddim(i):
    sched, x, eu, _ = setup()
    t = sched.timesteps[i]
    expected = sched.step(eu, t, x, eta=0.0).prev_sample
    assert torch.allclose(cfgpp_ddim_step(sched, eu, eu, t, x, 0.6), expected, atol=1e-5)


def test_cfgpp_denoises_with_guided_eps_and_renoises_with_unconditional():
    sched, x, eu, ec = setup()
    t = sched.timesteps[3]
    lam = 0.6
    guided = eu + lam * (ec - eu)
    # DDIM with the guided eps predicts the same x0; CFG++ swaps the renoising direction to eps_u.
    x0 = sched.step(guided, t, x, eta=0.0).pred_original_sample
    a_prev = sched.alphas_cumprod[t - 1000 // 10]
    expected = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eu
    out = cfgpp_ddim_step(sched, eu, ec, t, x, lam)
    assert torch.allclose(out, expected, atol=1e-5)
    assert not torch.allclose(out, sched.step(guided, t, x, eta=0.0).prev_sample, atol=1e-3)  # not plain CFG


def test_cfgpp_refuses_other_schedulers():
    _, x, eu, ec = setup()
    with pytest.raises(TypeError, match="DDIM"):
        cfgpp_ddim_step(EulerDiscreteScheduler(), eu, ec, 10, x, 0.6)


def test_when_the_unconditional_pass_is_needed():
    assert needs_unconditional("cfg++", 1.0) and needs_unconditional("cfg", 7.5)
    assert not needs_unconditional("cfg", 1.0)
    with pytest.raises(ValueError, match="cfg"):
        needs_unconditional("pag", 1.0)
