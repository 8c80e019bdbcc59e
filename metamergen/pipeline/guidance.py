"""Classifier-free guidance (CFG) and CFG++ (Chung et al. 2024) for the denoising loop.

Both combine an unconditional noise prediction ``eps_u`` and a conditional one ``eps_c``:

* **CFG**: ``eps = eps_u + w * (eps_c - eps_u)`` (w ~ 7.5 for SD1.5), then the scheduler's step;
* **CFG++** (the paper's sampler, DDIM only): ``eps_l = eps_u + l * (eps_c - eps_u)`` with
  ``l`` in [0, 1], denoise with ``eps_l`` but *renoise* with ``eps_u``::

      x0     = (x_t - sqrt(1 - a_t) * eps_l) / sqrt(a_t)
      x_prev = sqrt(a_prev) * x0 + sqrt(1 - a_prev) * eps_u

  which keeps the trajectory on the data manifold at small guidance (l = 0.6 is CFG++'s own
  choice for SD1.5 text-to-image, comparable to CFG 7.5). The last step returns ``x0`` itself, as
  CFG++'s reference algorithm (Chung et al. 2024, Algorithm 1) does.

The two strengths are on different scales: SD code's ``guidance_scale=7.5`` is
``guidance="cfg", guidance_scale=7.5`` here; the paper's sampler takes ``guidance="cfg++"`` with a
λ in [0, 1] (default 0.6).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import torch
from diffusers import DDIMScheduler

from metamergen.defaults import resolve_guidance_scale

GuidanceMethod = Literal["cfg++", "cfg"]

__all__ = [
    "CFG",
    "CFGPlusPlus",
    "GUIDANCE_RULES",
    "GuidanceMethod",
    "GuidanceRule",
    "cfgpp_ddim_step",
    "cfgpp_scale_error",
    "guidance_rule",
    "needs_unconditional",
]


def needs_unconditional(method: GuidanceMethod, scale: float) -> bool:
    """Whether a step needs the unconditional prediction (CFG++ always renoises with it)."""
    return guidance_rule(method, scale).needs_unconditional


def cfgpp_ddim_step(
    scheduler: DDIMScheduler,
    eps_uncond: torch.Tensor,
    eps_cond: torch.Tensor,
    timestep: int | torch.Tensor,
    sample: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One deterministic (eta = 0) DDIM step with CFG++.

    Parameters
    ----------
    scheduler
        A :class:`~diffusers.DDIMScheduler` whose ``set_timesteps`` has been called; epsilon prediction.
    eps_uncond, eps_cond
        ``(B, C, h, w)`` noise predictions without and with the condition.
    timestep
        Current timestep ``t`` (from ``scheduler.timesteps``).
    sample
        ``(B, C, h, w)`` current latents ``x_t``.
    scale
        CFG++ strength ``l`` (0 = unconditional, 1 = conditional denoising direction).

    Returns
    -------
    torch.Tensor
        ``x_{t-1}``, same shape and dtype as ``sample``; at the last step (``t`` minus the step size
        below 0) the clean estimate ``x0`` itself, as CFG++'s reference algorithm returns, not
        DDIM's ``sqrt(a_final) * x0 + sqrt(1 - a_final) * eps_u`` (with SD1.5's schedule
        ``a_final = alphas_cumprod[0]``, which would add back about 3 % of ``eps_u``).
    """
    if not isinstance(scheduler, DDIMScheduler):
        raise TypeError(
            f"CFG++ is implemented for DDIM (the paper's sampler); got {type(scheduler).__name__}. "
            "Use DDIMScheduler.from_config(pipe.scheduler.config) or guidance='cfg'."
        )
    if scheduler.config.prediction_type != "epsilon":
        raise ValueError(f"CFG++ here needs an epsilon-prediction model, got {scheduler.config.prediction_type!r}.")
    t = int(timestep)
    prev_t = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    alphas = scheduler.alphas_cumprod
    a_t = alphas[t]
    x, eu, ec = sample.float(), eps_uncond.float(), eps_cond.float()
    eps = eu + scale * (ec - eu)
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    if prev_t < 0:  # the last step: CFG++ returns the clean estimate
        return x0.to(sample.dtype)
    a_prev = alphas[prev_t]
    return (a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eu).to(sample.dtype)


# ----------------------------------------------------------------------------- rules


class GuidanceRule(ABC):
    """How one denoising step combines the unconditional and conditional noise predictions.

    The pipeline calls :meth:`step` once per timestep; a rule owns its strength and the choice
    of sampler step, so a new rule (e.g. per-stream guidance) is a subclass, not a branch in the
    loop. Register it in :data:`GUIDANCE_RULES` to make it available by name.

    Parameters
    ----------
    scale
        Guidance strength; ``None`` takes the rule's default (:data:`metamergen.defaults.GUIDANCE_SCALES`).
    """

    #: The name the pipeline, the study settings and the command line use.
    name: ClassVar[str]

    def __init__(self, scale: float | None = None) -> None:
        self.scale = resolve_guidance_scale(self.name, scale)
        self.check_scale(self.scale)

    def check_scale(self, scale: float) -> None:  # noqa: B027 - a hook; a rule without limits keeps it
        """Raise :class:`ValueError` for a strength this rule does not take (default: any)."""

    @property
    def needs_unconditional(self) -> bool:
        """Whether :meth:`step` needs the unconditional prediction (else the batch is not doubled)."""
        return True

    @abstractmethod
    def step(
        self,
        scheduler: Any,
        eps_uncond: torch.Tensor | None,
        eps_cond: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        **step_kwargs: Any,
    ) -> torch.Tensor:
        """``x_{t-1}`` from ``x_t`` (``sample``) and the two predictions, each ``(B, C, h, w)``.

        ``eps_uncond`` is ``None`` when :attr:`needs_unconditional` is False. ``step_kwargs`` are
        the scheduler's (``eta``, ``generator``) for rules that call ``scheduler.step``.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self.scale})"


class CFG(GuidanceRule):
    """Classifier-free guidance: ``eps = eps_u + w * (eps_c - eps_u)``, then the scheduler's own step.

    ``w = 1`` is the conditional prediction alone (no unconditional pass); SD1.5's usual ``w`` is 7.5.
    """

    name = "cfg"

    def check_scale(self, scale: float) -> None:
        if not scale >= 0:
            raise ValueError(f"CFG takes a guidance_scale >= 0 (SD1.5's usual value is 7.5), got {scale}.")

    @property
    def needs_unconditional(self) -> bool:
        return self.scale != 1.0

    def step(self, scheduler, eps_uncond, eps_cond, timestep, sample, **step_kwargs):
        eps = eps_cond if eps_uncond is None else eps_uncond + self.scale * (eps_cond - eps_uncond)
        if not isinstance(scheduler, DDIMScheduler):  # eta and generator are DDIM's arguments
            step_kwargs = {}
        return scheduler.step(eps, timestep, sample, **step_kwargs).prev_sample


class CFGPlusPlus(GuidanceRule):
    """CFG++ (Chung et al. 2024), the paper's sampler: guided denoising, unconditional renoising (DDIM only).

    The strength ``l`` lies in [0, 1]: 0 is unconditional sampling, 1 the conditional direction;
    0.6 is comparable to CFG 7.5.
    """

    name = "cfg++"

    def check_scale(self, scale: float) -> None:
        if not 0 <= scale <= 1:
            raise ValueError(cfgpp_scale_error(scale))

    def step(self, scheduler, eps_uncond, eps_cond, timestep, sample, **step_kwargs):
        return cfgpp_ddim_step(scheduler, eps_uncond, eps_cond, timestep, sample, self.scale)


def cfgpp_scale_error(scale: float) -> str:
    """The error message for a CFG++ strength outside [0, 1], showing both ways of writing guidance.

    Parameters
    ----------
    scale
        The strength the user passed (e.g. SD's 7.5).

    Returns
    -------
    str
        One line: ``guidance="cfg", guidance_scale=<scale>`` for SD-style guidance, or a λ in [0, 1].
    """
    return (
        f"guidance_scale={scale} is outside [0, 1], the range of CFG++'s λ (guidance='cfg++', the paper's sampler "
        f"and the default; λ = 0.6 is about as strong as CFG 7.5). For Stable-Diffusion-style guidance pass "
        f"guidance='cfg', guidance_scale={scale}; to keep the paper's sampler pass a λ in [0, 1], e.g. "
        "guidance_scale=0.6."
    )


#: Guidance rules by name.
GUIDANCE_RULES: dict[str, type[GuidanceRule]] = {CFGPlusPlus.name: CFGPlusPlus, CFG.name: CFG}


def guidance_rule(method: str | GuidanceRule, scale: float | None = None) -> GuidanceRule:
    """The rule ``method`` names, with strength ``scale`` (``None``: the rule's default).

    A :class:`GuidanceRule` instance passes through (then ``scale`` must be ``None``).
    """
    if isinstance(method, GuidanceRule):
        if scale is not None:
            raise ValueError("Pass the strength inside the guidance rule object, not as guidance_scale as well.")
        return method
    if method not in GUIDANCE_RULES:
        raise ValueError(f"Unknown guidance method {method!r}; choose one of {sorted(GUIDANCE_RULES)}.")
    return GUIDANCE_RULES[method](scale)
