"""A tiny randomly initialised CNN: the offline model of the tests and of ``model-metamers --tiny``.

It is not a model of anything (random weights); it exercises the machinery on 16-64 px images in
milliseconds per step.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["tiny_cnn"]


def tiny_cnn(seed: int = 0, *, n_classes: int = 4, inplace: bool = False) -> nn.Module:
    """conv-ReLU x 3 (stride 1, 2, 2; 8, 16, 16 channels) -> global average pool -> linear; frozen, eval mode.

    Parameters
    ----------
    seed
        Seed of the weights (a private generator: the global random state is untouched).
    n_classes
        Outputs of the last layer.
    inplace
        Use in-place ReLUs (as torchvision's CNNs do).

    Returns
    -------
    torch.nn.Sequential
        Module paths ``"0"`` .. ``"8"``: ReLUs at ``"1"``, ``"3"``, ``"5"``; ``(B, 3, H, W)`` -> ``(B, n_classes)``.
    """
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(inplace=inplace),
        nn.Conv2d(16, 16, 3, stride=2, padding=1),
        nn.ReLU(inplace=inplace),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, n_classes),
    )
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for module in model:
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()
