"""Several models' layers as one representation, with a schedule saying which of them a step matches.

An :class:`Ensemble` is one ``nn.Module`` (so plenoptic's ``Metamer`` takes it as its model): its
output is the concatenation of every member's flattened layer, and :meth:`Ensemble.loss` compares
two such outputs member by member, each member's distance normalised by its target's norm (Feather's
loss) so that members with large activations do not drown the others. A single model and layer is an
ensemble of one.

Schedules (Boehm et al. 2025 switch models during the optimisation; a mean over models is the other
variant they describe):

=========  ==========================================================================================
``mean``   every step matches every member; the loss is the weighted mean of the member losses
``switch`` step ``t`` matches member ``(t // switch_every) % n`` only: members in turn, in order
``random`` step ``t`` matches one member drawn for block ``t // switch_every`` from ``seed``
=========  ==========================================================================================

The member a step uses is a pure function of the step number (and ``seed``), so a synthesis resumed
from a checkpoint visits the members exactly as an uninterrupted one. During a ``switch`` or
``random`` step the inactive members are not computed at all (their slots hold zeros that the loss
ignores); outside synthesis steps (targets, checks, evaluation) every member is computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from metamergen.metamers.activations import LayerActivations
from metamergen.utils.seeds import derive_seed

# Not plenoptic: it has no ensembles or model switching; one nn.Module lets its Metamer drive them unchanged.
__all__ = ["SCHEDULES", "Ensemble", "Schedule", "normalized_distance"]

Schedule = Literal["mean", "switch", "random"]
SCHEDULES: tuple[str, ...] = ("mean", "switch", "random")


def normalized_distance(rep: Tensor, target: Tensor, *, normalize: bool = True) -> Tensor:
    """Feather's loss per image: ``||rep - target||_2 / ||target||_2`` over each row.

    Parameters
    ----------
    rep, target
        ``(B, D)`` activations.
    normalize
        Divide by the target's norm (``False``: the plain L2 distance).

    Returns
    -------
    Tensor
        ``(B,)`` distances, >= 0; a row whose target is all zeros is divided by 1 instead of 0.
    """
    dist = torch.linalg.vector_norm(rep - target, dim=1)
    if not normalize:
        return dist
    norm = torch.linalg.vector_norm(target, dim=1)
    return dist / torch.where(norm > 0, norm, torch.ones_like(norm))


class Ensemble(nn.Module):
    """Members' layers concatenated; :meth:`loss` is the per-member normalised distance under a schedule.

    Parameters
    ----------
    members
        One or more :class:`LayerActivations`, each with its own model, layer and input transform.
    schedule
        ``"mean"``, ``"switch"`` or ``"random"`` (module docstring).
    switch_every
        Steps per member before the next (``switch``, ``random``; >= 1).
    weights
        Per-member weight of its loss (default 1 each; > 0).
    normalize
        Per member (or one value for all): divide its distance by its target's norm.
    seed
        Seed of the ``random`` schedule.

    Notes
    -----
    ``forward`` maps ``(B, C, H, W)`` images in [0, 1] to ``(B, sum(D_m))``. Set :attr:`active` (a
    tuple of member indices, or ``None`` for all) to compute only some members; synthesis does that
    for each step from :meth:`members_at` and resets it after.
    """

    def __init__(
        self,
        members: Sequence[LayerActivations],
        *,
        schedule: Schedule = "mean",
        switch_every: int = 1,
        weights: Sequence[float] | None = None,
        normalize: bool | Sequence[bool] = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("an ensemble needs at least one member.")
        for m in members:
            if not isinstance(m, nn.Module):
                raise TypeError(f"ensemble members must be LayerActivations modules, got {type(m).__name__}.")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}.")
        if int(switch_every) < 1:
            raise ValueError(f"switch_every must be >= 1, got {switch_every}.")
        weights = [1.0] * len(members) if weights is None else [float(w) for w in weights]
        if len(weights) != len(members) or any(not w > 0 for w in weights):
            raise ValueError(f"weights needs one value > 0 per member ({len(members)}), got {weights}.")
        norms = [bool(normalize)] * len(members) if isinstance(normalize, bool) else [bool(n) for n in normalize]
        if len(norms) != len(members):
            raise ValueError(f"normalize needs one value per member ({len(members)}), got {len(norms)}.")
        self.members = nn.ModuleList(members)
        self.schedule: Schedule = schedule
        self.switch_every = int(switch_every)
        self.weights = tuple(weights)
        self.normalize = tuple(norms)
        self.seed = int(seed)
        self.active: tuple[int, ...] | None = None
        self._sizes: list[int] | None = None
        self.eval()

    @property
    def names(self) -> list[str]:
        """Each member's name, in order."""
        return [getattr(m, "name", f"member{i}") for i, m in enumerate(self.members)]

    def members_at(self, iteration: int) -> tuple[int, ...]:
        """Indices of the members that synthesis step ``iteration`` (0-based) matches."""
        n = len(self.members)
        if self.schedule == "mean" or n == 1:
            return tuple(range(n))
        block = int(iteration) // self.switch_every
        if self.schedule == "switch":
            return (block % n,)
        return (derive_seed(self.seed, "ensemble-random", block) % n,)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, C, H, W)`` in [0, 1] -> ``(B, sum(D_m))``; inactive members' slots are zeros."""
        outs = []
        for i, member in enumerate(self.members):
            if self.active is None or i in self.active or self._sizes is None:
                outs.append(member(x))
            else:
                outs.append(x.new_zeros(x.shape[0], self._sizes[i]))
        if self.active is None:
            self._sizes = [o.shape[1] for o in outs]
        return torch.cat(outs, dim=1)

    def split(self, rep: Tensor) -> list[Tensor]:
        """``(B, sum(D_m))`` -> one ``(B, D_m)`` tensor per member (after one full forward pass)."""
        if self._sizes is None:
            raise RuntimeError("the members' sizes are known after one forward pass with every member active.")
        return list(torch.split(rep, self._sizes, dim=1))

    def member_losses(self, rep: Tensor, target: Tensor) -> Tensor:
        """``(n_members, B)`` normalised distances between ``rep`` and ``target`` (``(B, sum(D_m))`` each)."""
        pairs = zip(self.split(rep), self.split(target), self.normalize)
        return torch.stack([normalized_distance(r, t, normalize=n) for r, t, n in pairs])

    def loss(self, rep: Tensor, target: Tensor) -> Tensor:
        """The synthesis loss: weighted mean over active members of their distance, mean over images (scalar)."""
        active = list(range(len(self.members)) if self.active is None else self.active)
        weights = rep.new_tensor([self.weights[i] for i in active])
        per_member = self.member_losses(rep, target)[active].mean(dim=1)
        return (weights * per_member).sum() / weights.sum()
