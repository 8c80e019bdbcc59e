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


@pytest.mark.parametrize("i", [0, 5, 8])  # first, middle and last-but-one step
def test_cfgpp_without_guidance_gap_is_plain_ddim(i):
    sched, x, eu, _ = setup()
    t = sched.timesteps[i]
    expected = sched.step(eu, t, x, eta=0.0).prev_sample
    assert torch.allclose(cfgpp_ddim_step(sched, eu, eu, t, x, 0.6), expected, atol=1e-5)


def test_cfgpp_last_step_returns_the_clean_estimate():
    """CFG++'s Algorithm 1 returns x0 at the last step; DDIM with SD1.5's schedule (set_alpha_to_one
    False) would return sqrt(a_0) * x0 + sqrt(1 - a_0) * eps_u, about 3 % of eps_u added back."""
    sched, x, eu, ec = setup()
    t = sched.timesteps[-1]
    guided = eu + 0.6 * (ec - eu)
    x0 = sched.step(guided, t, x, eta=0.0).pred_original_sample
    out = cfgpp_ddim_step(sched, eu, ec, t, x, 0.6)
    assert torch.allclose(out, x0, atol=1e-5)
    a_final = sched.final_alpha_cumprod
    renoised = a_final.sqrt() * x0 + (1 - a_final).sqrt() * eu
    assert (out - renoised).abs().max() > 1e-2


def reference_cfgpp(sched, eps_fn, x, lam):
    """CFG++ (Chung et al. 2024), Algorithm 1 (DDIM), written from the paper: denoise with the guided
    eps, renoise with the unconditional one, return the last x0. x0 comes from diffusers' own DDIM."""
    step = sched.config.num_train_timesteps // sched.num_inference_steps
    x0 = None
    for t in sched.timesteps:
        eu, ec = eps_fn(x, t)
        x0 = sched.step(eu + lam * (ec - eu), t, x, eta=0.0).pred_original_sample
        a_prev = sched.alphas_cumprod[int(t) - step] if int(t) - step >= 0 else None
        if a_prev is None:
            return x0
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eu
    return x0


def test_a_cfgpp_sampling_loop_follows_the_reference_algorithm():
    from metamergen.pipeline.guidance import CFGPlusPlus

    sched, x, _, _ = setup()
    w = torch.randn(4, 4, generator=torch.Generator().manual_seed(3)) * 0.1

    def eps_fn(x, t):  # a smooth stand-in for the UNet's two predictions
        eu = torch.tanh(torch.einsum("bchw,cd->bdhw", x, w)) + 0.001 * float(t)
        return eu, eu + 0.3 * torch.sin(x)

    rule, latents = CFGPlusPlus(0.6), x.clone()
    for t in sched.timesteps:
        eu, ec = eps_fn(latents, t)
        latents = rule.step(sched, eu, ec, t, latents)
    assert torch.allclose(latents, reference_cfgpp(sched, eps_fn, x, 0.6), atol=1e-5)


def test_a_cfgpp_strength_out_of_range_shows_both_ways_of_writing_guidance():
    from metamergen.pipeline.guidance import guidance_rule

    with pytest.raises(ValueError) as err:
        guidance_rule("cfg++", 7.5)
    message = str(err.value)
    assert "guidance='cfg', guidance_scale=7.5" in message  # SD-style code, ported
    assert "guidance_scale=0.6" in message and "[0, 1]" in message  # the paper's sampler
    assert "\n" not in message


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


# ----------------------------------------------------------------------------------- rules


def test_rules_are_found_by_name_and_take_their_defaults():
    from metamergen import defaults
    from metamergen.pipeline.guidance import CFG, CFGPlusPlus, guidance_rule

    assert isinstance(guidance_rule("cfg++"), CFGPlusPlus) and guidance_rule("cfg++").scale == defaults.CFGPP_SCALE
    assert isinstance(guidance_rule("cfg", 3.0), CFG) and guidance_rule("cfg", 3.0).scale == 3.0
    with pytest.raises(ValueError, match=r"\[0, 1\].*guidance='cfg'"):
        guidance_rule("cfg++", 7.5)
    rule = CFG(2.0)
    assert guidance_rule(rule) is rule
    with pytest.raises(ValueError, match="inside the guidance rule"):
        guidance_rule(rule, 3.0)


def test_the_cfg_rule_is_classifier_free_guidance_then_the_schedulers_step():
    from metamergen.pipeline.guidance import CFG, CFGPlusPlus

    sched, x, eu, ec = setup()
    t = sched.timesteps[4]
    expected = sched.step(eu + 3.0 * (ec - eu), t, x, eta=0.0).prev_sample
    assert torch.allclose(CFG(3.0).step(sched, eu, ec, t, x, eta=0.0), expected, atol=1e-6)
    assert not CFG(1.0).needs_unconditional and CFGPlusPlus(0.6).needs_unconditional
    assert torch.allclose(CFG(1.0).step(sched, None, ec, t, x, eta=0.0), sched.step(ec, t, x, eta=0.0).prev_sample)
    assert torch.equal(CFGPlusPlus(0.6).step(sched, eu, ec, t, x), cfgpp_ddim_step(sched, eu, ec, t, x, 0.6))


def test_a_custom_rule_drives_the_pipelines_loop():
    """A researcher's own rule (here: record each call, then plain CFG++) plugs into the pipeline."""
    from metamergen.pipeline.guidance import CFGPlusPlus
    from metamergen.testing import tiny_pipeline

    class Recording(CFGPlusPlus):
        calls: list = []

        def step(self, scheduler, eps_uncond, eps_cond, timestep, sample, **kw):
            self.calls.append(int(timestep))
            return super().step(scheduler, eps_uncond, eps_cond, timestep, sample, **kw)

    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    scene = torch.rand(3, 28, 28)
    kw = dict(image=scene, fixations=[[5.0, 5.0]], num_inference_steps=3, output_type="latent")
    rule = Recording(0.6)
    custom = pipe(**kw, guidance=rule, generator=torch.Generator().manual_seed(0)).images
    named = pipe(**kw, guidance="cfg++", guidance_scale=0.6, generator=torch.Generator().manual_seed(0)).images
    assert rule.calls == [int(t) for t in pipe.scheduler.timesteps]
    assert torch.equal(custom, named)
