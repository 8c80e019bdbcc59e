"""One layer of any torch model as a function of the image: the representation a metamer matches.

:class:`LayerActivations` wraps a model, names one of its layers by module path (the dotted names of
``model.named_modules()``, read with a forward hook) or, when torchvision is installed, by a
torchvision feature-extraction node name, and returns that layer's activations flattened per image.
It applies a per-model input transform first (images come in as RGB in [0, 1]; a CNN trained on
ImageNet wants them normalised, a ViT may want other statistics) and can make the layer a "fake
ReLU" (Feather et al. 2023: ReLU going forward, identity going backward, so that the optimisation
does not stall on units that are off).

The forward pass stops at the layer (later layers are not computed), so a metamer of an early layer
costs a fraction of a full forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

# Not plenoptic: it takes a model whose output is the representation; naming a layer of any model is ours.
__all__ = ["LayerActivations", "Normalize", "layer_activations", "module_paths"]

#: How many valid names an unknown-layer error lists before it says "and N more".
_NAMES_SHOWN = 40


class _Stop(Exception):
    """Raised by the capture hook to end the forward pass once the layer has been computed."""


def module_paths(model: nn.Module) -> list[str]:
    """The layer names :class:`LayerActivations` accepts as module paths, in forward-definition order.

    Parameters
    ----------
    model
        Any ``torch.nn.Module``.

    Returns
    -------
    list of str
        ``model.named_modules()`` names without the root (``""``), e.g. ``["conv1", "relu1", "layer1.0"]``.
    """
    return [name for name, _ in model.named_modules() if name]


def _torchvision_node_names(model: nn.Module) -> list[str] | None:
    """torchvision's feature-extraction node names of ``model`` (eval graph), or None without torchvision."""
    try:
        from torchvision.models.feature_extraction import get_graph_node_names
    except Exception:  # noqa: BLE001 - torchvision absent or broken against this torch: the option is off
        return None
    try:
        return list(get_graph_node_names(model)[1])
    except Exception:  # noqa: BLE001 - a model torch.fx cannot trace has no node names
        return []


def _unknown_layer(model: nn.Module, layer: str, nodes: list[str] | None) -> ValueError:
    names = module_paths(model)
    shown = ", ".join(names[:_NAMES_SHOWN]) + (
        f", and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else ""
    )
    tail = (
        "torchvision is not installed here, so feature-extraction node names are not available"
        if nodes is None
        else f"nor one of torchvision's {len(nodes)} node names (torchvision.models.feature_extraction.get_graph_node_names)"
    )
    return ValueError(
        f"layer {layer!r} is not a module path of {type(model).__name__} ({shown or 'it has no submodules'}); {tail}."
    )


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std``: the input transform most image classifiers expect.

    Parameters
    ----------
    mean, std
        One value per channel (``std`` > 0).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean and std need one value per channel each, got {len(mean)} and {len(std)}.")
        if any(not (math.isfinite(s) and s > 0) for s in std):
            raise ValueError(f"std must be finite and > 0 in every channel, got {tuple(std)}.")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    @classmethod
    def imagenet(cls) -> Normalize:
        """ImageNet's mean and std (the statistics torchvision's and timm's CNNs are trained with)."""
        from metamergen.encoders.dinov2 import IMAGENET_MEAN, IMAGENET_STD  # the one place they are written

        return cls(IMAGENET_MEAN, IMAGENET_STD)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, C, H, W)``; returns the normalised images, same shape and dtype."""
        return (x - self.mean.to(x)) / self.std.to(x)


class LayerActivations(nn.Module):
    """The activations of one layer of ``model`` for images in [0, 1], flattened per image.

    Parameters
    ----------
    model
        Any ``torch.nn.Module`` in eval mode whose parameters do not require gradients (metamer
        synthesis optimises the image only; :func:`plenoptic.remove_grad` freezes a model in place).
    layer
        A module path (one of :func:`module_paths`), or, with torchvision installed, a node name of
        ``torchvision.models.feature_extraction.get_graph_node_names(model)``. A module called more
        than once per forward pass (a shared ReLU) is refused on the first call: name a node instead.
    transform
        Applied to the ``(B, C, H, W)`` images in [0, 1] before ``model`` (e.g. :class:`Normalize`);
        ``None`` feeds them as they are.
    fake_relu
        Make the layer a fake ReLU (forward ReLU, backward identity). The layer must be a module path
        naming an ``nn.ReLU``; an in-place ReLU is handled (its input is copied first).
    name
        How records and errors refer to this member (default ``"<model class>:<layer>"``).

    Notes
    -----
    Calling the module returns a ``(B, D)`` tensor, ``D`` the layer's size per image, in the model's
    dtype and on its device. Hooks live only for the duration of a call: the wrapped model is not
    changed, and the same model can be used for recognition at the same time.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        *,
        transform: Callable[[Tensor], Tensor] | None = None,
        fake_relu: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        _check_frozen(model, "model")
        if isinstance(transform, nn.Module):
            _check_frozen(transform, "transform", mode=False)  # a transform's mode rarely matters; its parameters do
        self.model = model
        self.layer = str(layer)
        self.transform = transform
        self.fake_relu = bool(fake_relu)
        self.name = name or f"{type(model).__name__}:{self.layer}"
        self._extractor: nn.Module | None = None
        self._checked = False
        modules = dict(model.named_modules())
        if self.layer in modules and self.layer:
            if self.fake_relu and not isinstance(modules[self.layer], nn.ReLU):
                raise ValueError(
                    f"fake_relu needs the layer to be an nn.ReLU, but {self.layer!r} is a "
                    f"{type(modules[self.layer]).__name__}; name the ReLU module that ends it (one of "
                    f"{[n for n, m in modules.items() if isinstance(m, nn.ReLU)][:_NAMES_SHOWN]})."
                )
        else:
            nodes = _torchvision_node_names(model)
            if not nodes or self.layer not in nodes:
                raise _unknown_layer(model, self.layer, nodes)
            if self.fake_relu:
                raise ValueError(f"fake_relu needs a module path naming an nn.ReLU, not the node name {self.layer!r}.")
            from torchvision.models.feature_extraction import create_feature_extractor

            self._extractor = create_feature_extractor(model, return_nodes={self.layer: "out"}).eval()
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, C, H, W)`` images in [0, 1] -> ``(B, D)`` activations of the layer."""
        if self.transform is not None:
            x = self.transform(x)
        if self._extractor is not None:
            return self._extractor(x)["out"].flatten(1)
        return self._hooked(x).flatten(1)

    def _hooked(self, x: Tensor) -> Tensor:
        captured: list[Tensor] = []
        calls = [0]
        stop = self._checked  # the first call runs the whole model once, to count the layer's calls
        pre_inputs: list[Tensor] = []

        def pre_hook(_module: nn.Module, args: tuple) -> tuple | None:
            if self.fake_relu:
                pre_inputs.append(args[0])
                return (args[0].clone(), *args[1:])  # an in-place ReLU then leaves the original input intact
            return None

        def hook(_module: nn.Module, _args: tuple, output: Tensor) -> None:
            calls[0] += 1
            if calls[0] == 1:
                if not isinstance(output, Tensor):
                    raise TypeError(
                        f"layer {self.layer!r} returns a {type(output).__name__}, not a tensor; name a module that returns one."
                    )
                if self.fake_relu:
                    inp = pre_inputs[0]
                    output = inp + (output - inp).detach()  # forward: ReLU(inp); backward: identity
                captured.append(output)
            if stop:
                raise _Stop

        module = self.model.get_submodule(self.layer)
        handles = [module.register_forward_pre_hook(pre_hook), module.register_forward_hook(hook)]
        try:
            self.model(x)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        if not captured:
            raise ValueError(f"layer {self.layer!r} of {type(self.model).__name__} was not called in its forward pass.")
        if not self._checked:
            if calls[0] > 1:
                raise ValueError(
                    f"layer {self.layer!r} is called {calls[0]} times in one forward pass (a shared module), so "
                    "its activations are ambiguous; give each use its own module, or name a torchvision node "
                    "(e.g. 'layer1.0.relu_1') with torchvision installed."
                )
            self._checked = True
        return captured[0]


def _check_frozen(module: nn.Module, what: str, *, mode: bool = True) -> None:
    """Refuse a module with parameters that require gradients, or (``mode``) in training mode (one line each)."""
    learnable = [n for n, p in module.named_parameters() if p.requires_grad]
    if learnable:
        more = f" and {len(learnable) - 3} more" if len(learnable) > 3 else ""
        raise ValueError(
            f"{what} has {len(learnable)} parameter(s) that require gradients ({', '.join(learnable[:3])}{more}); "
            "metamer synthesis optimises the image only: freeze it first (plenoptic.remove_grad(model), or "
            "p.requires_grad_(False) for each parameter)."
        )
    training = [n or type(module).__name__ for n, m in module.named_modules() if m.training] if mode else []
    if training:
        raise ValueError(
            f"{what} is in training mode ({training[0]}{' and others' if len(training) > 1 else ''}): batch norm "
            "and dropout would change the target between calls; call .eval() on it first."
        )


@torch.no_grad()
def layer_activations(member: nn.Module, images: Tensor, *, batch_size: int = 64) -> Tensor:
    """``member(images)`` in batches without gradients: ``(N, C, H, W)`` in [0, 1] -> ``(N, D)`` on the CPU.

    Parameters
    ----------
    member
        A :class:`LayerActivations` (or any module returning ``(B, D)``).
    images
        The images, RGB in [0, 1], on the member's device or the CPU.
    batch_size
        Images per forward pass (>= 1).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}.")
    device = next((t.device for t in member.parameters()), images.device)
    out = [member(images[i : i + batch_size].to(device)).detach().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 0)
