"""Model metamers by optimisation, on plenoptic's ``Metamer``: one per (image, layer), or of an ensemble.

:class:`ModelMetamer` is a thin subclass of :class:`plenoptic.Metamer`. plenoptic supplies the loop
(``synthesize``: a tqdm bar, ``store_progress`` snapshots, a NaN check), the loss and gradient-norm
history, and ``save`` / ``load`` that check the model and loss by their outputs instead of pickling
them. This module adds what Feather's recipe and ensembles need:

- the model is an :class:`~metamergen.metamers.Ensemble` (a single layer is an ensemble of one) and
  the loss is its per-member normalised distance;
- the start is Feather's noise from a seed, and the optimizer, schedule, penalty and length come from
  a recipe (:mod:`~metamergen.metamers.recipes`), so ``setup`` needs no arguments, also after ``load``;
- each step tells the ensemble which members it matches (the schedule is a function of the step
  number, so a resumed run equals an uninterrupted one);
- ``synthesize()`` without ``max_iter`` runs to the end of the recipe, counting steps already done.

:func:`layer_metamers` makes one metamer per layer from the same noise, as Feather et al. do.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

try:
    import plenoptic as po
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("model metamers need plenoptic: pip install 'metamergen[metamers]' (plenoptic==2.1.1).") from e

from metamergen.metamers.activations import LayerActivations
from metamergen.metamers.ensemble import Ensemble
from metamergen.metamers.recipes import FeatherRecipe, Recipe, initial_image, recipe_from_dict

__all__ = ["ModelMetamer", "layer_metamers"]

#: plenoptic's load warns that setup() must follow for an optimizer other than Adam; load() here calls it.
_SETUP_REMINDER = "You will need to call setup()"


class ModelMetamer(po.Metamer):
    """A model metamer of ``image``: an image whose representation under ``model`` matches the image's.

    Parameters
    ----------
    image
        ``(B, C, H, W)`` float in [0, 1]: the natural image(s) whose representation is the target
        (one metamer per row, optimised independently: Feather's step is normalised per image).
    model
        A :class:`~metamergen.metamers.LayerActivations` or an :class:`~metamergen.metamers.Ensemble`.
    recipe
        :class:`~metamergen.metamers.FeatherRecipe` (default) or :class:`~metamergen.metamers.AdamRecipe`.
    seed
        Seed of the initial noise (:func:`~metamergen.metamers.initial_image`).

    Notes
    -----
    After construction call :meth:`synthesize` (``setup`` runs itself with the recipe). To resume:
    build a new object with the same arguments, :meth:`load` the saved file, call :meth:`synthesize`
    again. :attr:`metamer` is the current image, ``(B, C, H, W)`` in [0, 1] under the Feather recipe;
    :attr:`losses` the loss per step (under ``switch``/``random`` schedules, the loss of the member
    that step matched) plus the current full loss last.
    """

    def __init__(
        self, image: Tensor, model: LayerActivations | Ensemble, *, recipe: Recipe | None = None, seed: int = 0
    ) -> None:
        recipe = FeatherRecipe() if recipe is None else recipe
        if not isinstance(image, Tensor) or image.ndim != 4 or not image.is_floating_point():
            raise ValueError(f"image must be a float (B, C, H, W) tensor, got {_describe(image)}.")
        if not torch.isfinite(image).all() or image.min() < 0 or image.max() > 1:
            raise ValueError(
                f"image values must be finite and in [0, 1] (got [{image.min().item():.3g}, {image.max().item():.3g}]); "
                "the model's own normalisation belongs in the member's transform."
            )
        ensemble = model if isinstance(model, Ensemble) else Ensemble([model])
        with torch.no_grad():
            target = ensemble(image)
        if not torch.isfinite(target).all():
            raise ValueError(
                "the model's activations of the image are not all finite (NaN or inf): there is no target to match."
            )
        empty = [n for n, t in zip(ensemble.names, ensemble.split(target)) if t.shape[1] == 0]
        if empty:
            raise ValueError(f"member(s) {empty} return no activations (0 values per image).")
        super().__init__(
            image,
            ensemble,
            loss_function=ensemble.loss,
            penalty_function=po.regularize.penalize_range,
            penalty_lambda=float(recipe.penalty_lambda),
        )
        # plain values only: plenoptic saves every attribute and loads with torch.load(weights_only=True)
        self._recipe = recipe.record()
        self._seed = int(seed)

    @property
    def recipe(self) -> Recipe:
        """The recipe this synthesis follows."""
        return recipe_from_dict(self._recipe)

    @property
    def ensemble(self) -> Ensemble:
        """The model, as an ensemble (of one, for a single layer)."""
        return self._model

    def setup(
        self,
        initial_image: Tensor | None = None,
        optimizer: type[torch.optim.Optimizer] | None = None,
        optimizer_kwargs: dict | None = None,
        scheduler: type[torch.optim.lr_scheduler.LRScheduler] | None = None,
        scheduler_kwargs: dict | None = None,
    ) -> None:
        """plenoptic's ``setup`` with the recipe's values for every argument left out.

        The initial image defaults to Feather's noise for :attr:`seed`; the optimizer and schedule to
        the recipe's. After :meth:`load` it rebuilds the saved optimizer and scheduler classes.
        """
        r = self.recipe
        if self._loaded:  # rebuild the saved optimizer / scheduler from their classes (state comes from the file)
            super().setup(None, optimizer or r.optimizer, None, scheduler or r.scheduler, None)
            return
        if initial_image is None:
            initial_image = initial_image_for(self.image, self._seed, r)
        super().setup(
            initial_image,
            optimizer or r.optimizer,
            r.optimizer_kwargs() if optimizer_kwargs is None and optimizer is None else optimizer_kwargs,
            scheduler or r.scheduler,
            r.scheduler_kwargs() if scheduler_kwargs is None and scheduler is None else scheduler_kwargs,
        )

    def synthesize(
        self,
        max_iter: int | None = None,
        store_progress: bool | int = False,
        stop_criterion: float | None = None,
        stop_iters_to_check: int = 50,
    ) -> None:
        """Run ``max_iter`` more steps (default: what is left of the recipe's length).

        Parameters
        ----------
        max_iter
            Steps to run now; ``None`` runs to the recipe's total (0 steps when it is reached).
        store_progress
            Keep a copy of the metamer every this many steps (``True``: every step); the same value
            on every call (plenoptic's rule). Read them with ``saved_metamer`` or ``get_progress``.
        stop_criterion
            plenoptic's early stop on a flat loss; default the recipe's (0: never, a fixed length).
        stop_iters_to_check
            Window of that check.

        Raises
        ------
        ValueError
            The loss became NaN or infinite (plenoptic's check), or the model's gradient is NaN.
        """
        done = len(self._losses)
        if max_iter is None:
            max_iter = max(0, self.recipe.max_iter - done)
        if int(max_iter) < 0:
            raise ValueError(f"max_iter must be >= 0, got {max_iter}.")
        criterion = self.recipe.stop_criterion if stop_criterion is None else stop_criterion
        super().synthesize(int(max_iter), store_progress, criterion, stop_iters_to_check)

    def _optimizer_step(self, pbar: Any) -> float:
        """One step, with the ensemble's members for this step number active (all others skipped)."""
        ensemble: Ensemble = self._model
        ensemble.active = ensemble.members_at(len(self._losses))
        try:
            loss = super()._optimizer_step(pbar)
        finally:
            ensemble.active = None
        step = len(self._losses) - 1
        if not math.isfinite(loss):
            raise ValueError(
                f"the loss became {loss} at step {step}: the model's activations are not finite for the current "
                "image (a log or square root of a negative value, a division by zero?); synthesis stopped."
            )
        grad = self.metamer.grad
        if grad is not None and not torch.isfinite(grad).all():
            raise ValueError(
                f"the gradient became NaN or infinite at step {step} (loss {loss:.4g}): the model is not "
                "differentiable there (check the layer and any custom operation in its forward); synthesis stopped."
            )
        return loss

    def save(self, file_path: str | os.PathLike) -> None:
        """Write everything needed to resume (plenoptic's format: ``torch.save`` of a dict)."""
        super().save(os.fspath(file_path))

    def load(self, file_path: str | os.PathLike, map_location: str | None = None, **kwargs: Any) -> None:
        """Load a saved synthesis into this new object (same image, model, recipe and seed), ready to resume.

        plenoptic checks the image, the model's output and the loss's output against the saved ones;
        the recipe and seed are checked here too. The saved optimizer and schedule are rebuilt.
        """
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_SETUP_REMINDER)
            self._load(
                os.fspath(file_path),
                map_location,
                additional_check_attributes=["_recipe", "_seed"],
                **kwargs,
            )
        self.setup()

    @property
    def steps_done(self) -> int:
        """Synthesis steps taken so far (loaded ones included)."""
        return len(self._losses)

    @property
    def seed(self) -> int:
        """Seed of the initial noise."""
        return self._seed


def initial_image_for(image: Tensor, seed: int, recipe: Recipe) -> Tensor:
    """The recipe's start for ``image``: its shape, dtype and device, noise from ``seed``."""
    return initial_image(
        image.shape, seed, mean=recipe.init_mean, std=recipe.init_std, device=image.device, dtype=image.dtype
    )


def layer_metamers(
    model: nn.Module,
    image: Tensor,
    layers: Sequence[str],
    *,
    transform: Callable[[Tensor], Tensor] | None = None,
    fake_relu: bool | Sequence[bool] = False,
    recipe: Recipe | None = None,
    seed: int = 0,
    max_iter: int | None = None,
    store_progress: bool | int = False,
) -> dict[str, ModelMetamer]:
    """One metamer of ``image`` per layer of ``model``, every one from the same noise (Feather et al.).

    Parameters
    ----------
    model
        Any frozen ``nn.Module`` in eval mode.
    image
        ``(B, C, H, W)`` in [0, 1].
    layers
        Module paths (or torchvision node names, with torchvision installed).
    transform
        The model's input transform (e.g. :class:`~metamergen.metamers.Normalize`).
    fake_relu
        Per layer, or one value for all (only for layers that are ``nn.ReLU`` modules).
    recipe, seed, max_iter, store_progress
        As :class:`ModelMetamer` and :meth:`ModelMetamer.synthesize`.

    Returns
    -------
    dict
        Layer name -> synthesised :class:`ModelMetamer`, in the order of ``layers``.
    """
    layers = list(layers)
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers must be distinct, got {layers}.")
    relus = [bool(fake_relu)] * len(layers) if isinstance(fake_relu, bool) else [bool(f) for f in fake_relu]
    if len(relus) != len(layers):
        raise ValueError(f"fake_relu needs one value per layer ({len(layers)}), got {len(relus)}.")
    out: dict[str, ModelMetamer] = {}
    for layer, relu in zip(layers, relus):
        member = LayerActivations(model, layer, transform=transform, fake_relu=relu)
        synth = ModelMetamer(image, member, recipe=recipe, seed=seed)
        synth.synthesize(max_iter, store_progress=store_progress)
        out[layer] = synth
    return out


def _describe(x: Any) -> str:
    if isinstance(x, Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"a {type(x).__name__}"
