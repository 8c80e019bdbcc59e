"""Feather et al.'s update as a ``torch.optim.Optimizer``, and its step-size schedule.

plenoptic's ``Metamer`` takes any optimizer class; its pixel range is a soft penalty, whereas
Feather's recipe projects every iterate back into [0, 1]. :class:`FeatherStep` does that projection
inside ``step`` so the plenoptic loop needs no change:

    x <- clamp(x - lr * g / (||g||_2 + eps), 0, 1)

with the gradient norm taken per image (over all dimensions but the first), as the official code
(the ``robustness`` library's L2 step) does, so every image of a batch moves by exactly ``lr``
before the clamp, whatever the size of its gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch.optim.lr_scheduler import StepLR

# Not plenoptic: its Metamer keeps pixels in range with a soft penalty; Feather projects, so the step does.
__all__ = ["BlockHalving", "FeatherStep"]


class FeatherStep(torch.optim.Optimizer):
    """Fixed-length normalised-gradient step, then a clamp: the update of Feather et al. (2023).

    Parameters
    ----------
    params
        The tensors to optimise (the metamer: ``(B, C, H, W)``, one image per row).
    lr
        Step length η, in pixel units of the L2 norm of one image (Feather: 1, halved per block).
    eps
        Added to the gradient norm (Feather: 1e-10), so a zero gradient gives no step.
    bounds
        ``(low, high)`` of the clamp (images in [0, 1]).

    Notes
    -----
    Constructible from ``params`` alone (every other argument has its default), which is how
    plenoptic rebuilds a saved optimizer before loading its state dict.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1.0,
        eps: float = 1e-10,
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}.")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}.")
        low, high = (float(b) for b in bounds)
        if not low < high:
            raise ValueError(f"bounds must be (low, high) with low < high, got {bounds}.")
        super().__init__(params, {"lr": float(lr), "eps": float(eps), "bounds": (low, high)})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every parameter with a gradient; returns the closure's loss (if given)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            low, high = group["bounds"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.ndim > 1:
                    norm = torch.linalg.vector_norm(g.flatten(1), dim=1).view(-1, *([1] * (g.ndim - 1)))
                else:
                    norm = torch.linalg.vector_norm(g)
                p.sub_(group["lr"] * g / (norm + group["eps"]))
                p.clamp_(low, high)
        return loss


class BlockHalving(StepLR):
    """``StepLR`` with Feather's defaults: the step size times ``gamma`` (0.5) after every ``step_size`` (3000) steps.

    A subclass only so that plenoptic can rebuild it from the optimizer alone when a saved synthesis
    is loaded (it calls ``scheduler(optimizer)`` and then loads the saved state dict, which carries
    ``step_size``, ``gamma`` and the step count).
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, step_size: int = 3000, gamma: float = 0.5, last_epoch: int = -1
    ) -> None:
        if int(step_size) < 1:
            raise ValueError(f"step_size must be >= 1, got {step_size}.")
        super().__init__(optimizer, step_size=int(step_size), gamma=float(gamma), last_epoch=last_epoch)
