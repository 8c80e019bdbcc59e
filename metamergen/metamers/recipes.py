"""The two synthesis recipes, each value written once: Feather et al. 2023 (default) and plenoptic's Adam.

A recipe says how a metamer starts and how it is optimised; :class:`~metamergen.metamers.ModelMetamer`
reads everything from it. Both start from Feather's initial image,
``clamp(0.5 + 0.05 * N(0, 1), 0, 1)``, drawn from a seed, so two metamers made with the same seed
(of different layers, models or recipes) start from the same noise.

==============================  ======================================  ================================
                                :class:`FeatherRecipe` (Feather 2023)    :class:`AdamRecipe` (plenoptic)
==============================  ======================================  ================================
update                          x - η g/‖g‖ per image, clamp to [0, 1]   Adam (amsgrad), no clamp
pixel range                     hard (the clamp)                         soft: plenoptic's range
                                                                         penalty, λ = 0.1
step size                       η = 1, halved every 3000 steps           lr 0.01, halved every 3000
length                          8 blocks: 24 000 steps                   12 000 steps
early stop                      never (fixed length)                     never (fixed length)
==============================  ======================================  ================================

The Adam column is plenoptic's default optimizer and penalty with the schedule of its documented
Feather reproduction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from metamergen.metamers.optim import BlockHalving, FeatherStep
from metamergen.utils.seeds import derive_seed

__all__ = ["AdamRecipe", "FeatherRecipe", "Recipe", "initial_image", "recipe_from_dict"]


def initial_image(
    shape: tuple[int, ...] | torch.Size,
    seed: int,
    *,
    mean: float = 0.5,
    std: float = 0.05,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Feather's start: ``clamp(mean + std * N(0, 1), 0, 1)`` of ``shape``, the same for a seed on any device.

    The noise is drawn on the CPU from a generator seeded by ``derive_seed(seed, "metamer-init")``
    and then moved, so CPU and GPU runs start alike and no global random state is used.
    """
    generator = torch.Generator().manual_seed(derive_seed(int(seed), "metamer-init"))
    noise = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    return (mean + std * noise).clamp_(0.0, 1.0).to(device=device, dtype=dtype)


@dataclass(frozen=True)
class _Recipe:
    #: Steps per block; the step size is multiplied by ``decay`` after each block.
    block_iterations: int
    n_blocks: int
    decay: float
    init_mean: float = 0.5
    init_std: float = 0.05

    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if self.block_iterations < 1 or self.n_blocks < 1:
            raise ValueError(
                f"block_iterations and n_blocks must be >= 1, got {self.block_iterations}, {self.n_blocks}."
            )
        if not 0 < self.decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {self.decay}.")
        if not (0 <= self.init_mean <= 1 and self.init_std >= 0):
            raise ValueError(f"init_mean must be in [0, 1] and init_std >= 0, got {self.init_mean}, {self.init_std}.")

    @property
    def max_iter(self) -> int:
        """Total steps of the recipe."""
        return self.block_iterations * self.n_blocks

    #: plenoptic's loss-convergence threshold; 0 never stops early (``|Δloss| < 0`` is never true).
    stop_criterion: ClassVar[float] = 0.0
    #: The step-size schedule (``StepLR`` rebuildable from the optimizer alone).
    scheduler: ClassVar[type[BlockHalving]] = BlockHalving

    def scheduler_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`BlockHalving`."""
        return {"step_size": self.block_iterations, "gamma": self.decay}

    def record(self) -> dict[str, Any]:
        """The recipe as plain values (its ``name`` included): stored with a synthesis, read back by :func:`recipe_from_dict`."""
        return {"name": self.name, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class FeatherRecipe(_Recipe):
    """Feather et al. 2023 (the official code's image defaults).

    Parameters
    ----------
    step_size
        η of the first block (pixel-space L2 length of each step, per image).
    block_iterations, n_blocks, decay
        ``n_blocks`` blocks of ``block_iterations`` steps, η times ``decay`` after each (3000, 8, 0.5).
    init_mean, init_std
        The initial image, ``clamp(init_mean + init_std * noise, 0, 1)`` (0.5, 0.05).
    eps
        Added to the gradient norm (1e-10).
    """

    block_iterations: int = 3000
    n_blocks: int = 8
    decay: float = 0.5
    step_size: float = 1.0
    eps: float = 1e-10

    name: ClassVar[str] = "feather"
    optimizer: ClassVar[type[torch.optim.Optimizer]] = FeatherStep
    penalty_lambda: ClassVar[float] = 0.0  # the clamp keeps pixels in range; no penalty

    def optimizer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`FeatherStep`."""
        return {"lr": self.step_size, "eps": self.eps}


@dataclass(frozen=True)
class AdamRecipe(_Recipe):
    """plenoptic's optimizer (Adam, amsgrad) and range penalty, on Feather's start and step schedule.

    Parameters
    ----------
    lr
        Adam's learning rate of the first block (0.01).
    block_iterations, n_blocks, decay
        3000, 4, 0.5: 12 000 steps, the rate halved every 3000.
    penalty_lambda
        Weight of plenoptic's ``penalize_range`` (squared distance of pixels outside [0, 1]), 0.1.
    """

    block_iterations: int = 3000
    n_blocks: int = 4
    decay: float = 0.5
    lr: float = 0.01
    penalty_lambda: float = 0.1

    name: ClassVar[str] = "adam"
    optimizer: ClassVar[type[torch.optim.Optimizer]] = torch.optim.Adam

    def optimizer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``torch.optim.Adam``."""
        return {"lr": self.lr, "amsgrad": True}


Recipe = FeatherRecipe | AdamRecipe
_RECIPES: dict[str, type[_Recipe]] = {"feather": FeatherRecipe, "adam": AdamRecipe}


def recipe_from_dict(values: dict[str, Any]) -> Recipe:
    """The recipe a :meth:`record` (or a config's ``recipe:`` mapping) describes; unknown keys are refused."""
    values = dict(values)
    name = values.pop("name", "feather")
    if name not in _RECIPES:
        raise ValueError(f"recipe name must be one of {', '.join(_RECIPES)}, got {name!r}.")
    cls = _RECIPES[name]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {name} recipe setting(s) {unknown}; known: {sorted(known)}.")
    return cls(**values)
