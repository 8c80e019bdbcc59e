"""Pretrained image classifiers by name, each with the input normalisation it was trained with.

==============  =======================================  ============================================
source          name                                     weights and normalisation
==============  =======================================  ============================================
``torchvision`` ``resnet50``, ``alexnet``, ``vit_b_16``  ``torchvision.models.get_model(name, weights=
                                                         "DEFAULT")``; mean/std of the weights' own
                                                         ``transforms()``
``timm``        ``resnet50.a1_in1k``, ``vit_base_patch16  ``timm.create_model(name, pretrained=True)``;
                _224.augreg_in21k_ft_in1k``              ``timm.data.resolve_model_data_config``
``transformers`` ``google/vit-base-patch16-224`` or a     ``AutoModelForImageClassification`` +
                local folder                             ``AutoImageProcessor`` (``image_mean`` /
                                                         ``image_std``); the model is wrapped so that
                                                         it returns logits (layers: ``net.<path>``)
==============  =======================================  ============================================

The weights download on first use into each library's own cache (or ``cache_dir`` for
``transformers``); nothing here works offline except a local ``transformers`` folder. Every model is
returned frozen and in eval mode, as :class:`~metamergen.metamers.LayerActivations` requires.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from metamergen.metamers.activations import Normalize

__all__ = ["SOURCES", "PretrainedModel", "load_pretrained"]

#: Where :func:`load_pretrained` finds models, and the pip package each needs.
SOURCES: dict[str, str] = {"torchvision": "torchvision", "timm": "timm", "transformers": "transformers"}


@dataclass(frozen=True)
class PretrainedModel:
    """A loaded classifier.

    Attributes
    ----------
    model
        Frozen, eval-mode ``nn.Module``: normalised ``(B, 3, H, W)`` images -> ``(B, K)`` logits.
    normalize
        The input normalisation the weights were trained with (images in [0, 1] go through it first).
    name
        ``source:name`` as given.
    input_size
        Side in pixels the weights were trained at (their evaluation crop), e.g. 224.
    """

    model: nn.Module
    normalize: Normalize
    name: str
    input_size: int


class _Logits(nn.Module):
    """A ``transformers`` image classifier returning its ``logits`` tensor, as other classifiers do."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.net(pixel_values=pixel_values).logits


def _import(source: str):
    try:
        return importlib.import_module(source)
    except ImportError:
        raise ImportError(
            f"loading a {source} model needs the {SOURCES[source]} package: pip install {SOURCES[source]}"
        ) from None


def _side(size: int | Sequence[int]) -> int:
    return int(size if isinstance(size, int) else size[-1])


def _frozen(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def load_pretrained(spec: str, *, cache_dir: str | None = None) -> PretrainedModel:
    """Load ``source:name`` (table in the module docstring) with its weights and normalisation.

    Parameters
    ----------
    spec
        e.g. ``"torchvision:resnet50"``, ``"timm:vit_base_patch16_224.augreg_in21k_ft_in1k"``,
        ``"transformers:google/vit-base-patch16-224"`` or ``"transformers:/path/to/folder"``.
    cache_dir
        Download folder for ``transformers`` (torchvision and timm use their own caches).

    Raises
    ------
    ValueError
        ``spec`` has no known ``source:``.
    ImportError
        The source's package is not installed (the message names the pip command).
    """
    source, sep, name = spec.partition(":")
    if not sep or source not in SOURCES or not name:
        raise ValueError(f"a pretrained model is source:name with source one of {', '.join(SOURCES)}, got {spec!r}.")
    lib = _import(source)
    if source == "torchvision":
        importlib.import_module("torchvision.models")
        weights = lib.models.get_model_weights(name).DEFAULT
        model = lib.models.get_model(name, weights=weights)
        preset = weights.transforms()
        normalize, size = Normalize(preset.mean, preset.std), _side(preset.crop_size)
    elif source == "timm":
        model = lib.create_model(name, pretrained=True)
        data = importlib.import_module("timm.data").resolve_model_data_config(model)
        normalize, size = Normalize(data["mean"], data["std"]), _side(data["input_size"])
    else:
        net = lib.AutoModelForImageClassification.from_pretrained(name, cache_dir=cache_dir)
        processor = lib.AutoImageProcessor.from_pretrained(name, cache_dir=cache_dir)
        size_spec = getattr(processor, "crop_size", None) or processor.size
        side = size_spec.get("height") or size_spec.get("shortest_edge")
        model = _Logits(net)
        normalize, size = Normalize(processor.image_mean, processor.image_std), int(side)
    return PretrainedModel(model=_frozen(model), normalize=normalize, name=spec, input_size=size)
