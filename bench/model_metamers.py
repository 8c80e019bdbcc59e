"""Model metamers: steps/s of a Feather metamer against plenoptic's own ``Metamer`` loop, and memory.

One model, one layer, one image, two loops over the same ``LayerActivations`` module:

1. **metamergen**: :class:`metamergen.metamers.ModelMetamer` with Feather's recipe (normalised loss,
   clamped normalised-gradient step, block-halving schedule, ensemble bookkeeping);
2. **plenoptic**: ``plenoptic.Metamer`` as it comes (MSE loss, range penalty, Adam).

Both are plenoptic's loop underneath, so the ratio is what MetamerGen's recipe and bookkeeping cost
per step (goal: within noise of 1.0). Memory: the process's peak above the start of a few steps of
each (RSS on a CPU, ``max_memory_allocated`` on CUDA).

The model is ResNet-50 at 224 px with random weights (timing needs no trained weights):
torchvision's when it is installed, else a pure-torch copy of its architecture (the same layers,
25.6 M parameters), because no torchvision release installs beside this project's CPU torch build.
``--tiny`` uses the tiny random CNN at 32 px (a smoke test).

    python bench/model_metamers.py [--device cuda] [--layer layer3] [--steps 10]
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # plenoptic's per-step progress bar would time itself

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

NAME = "model_metamers"


def build_parser():
    p = bl.base_parser(NAME, __doc__.split("\n\n")[0], repeats=3, warmup=1)
    p.add_argument("--layer", default=None, help="module path (default layer3; '3' with --tiny)")
    p.add_argument("--steps", type=int, default=10, help="synthesis steps per timed call (default 10)")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default 224; 32 with --tiny)")
    return p


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + (x if self.downsample is None else self.downsample(x)))


def resnet50_shape() -> nn.Module:
    """ResNet-50's architecture (torchvision's layout and module names), random weights, frozen, eval."""
    try:
        from torchvision.models import resnet50

        model = resnet50(weights=None)
    except ImportError:  # torchvision cannot be installed beside the CPU torch build here
        layers, cin = [], 64
        for i, (width, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)]):
            stage = []
            for b in range(blocks):
                stage.append(_Bottleneck(cin, width, 2 if (b == 0 and i > 0) else 1))
                cin = width * 4
            layers.append(nn.Sequential(*stage))
        model = nn.Sequential()
        model.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        model.bn1, model.relu, model.maxpool = nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        model.layer1, model.layer2, model.layer3, model.layer4 = layers
        model.avgpool, model.flatten, model.fc = nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    device, dtype = bl.setup(args)
    import plenoptic as po

    from metamergen.metamers import LayerActivations, ModelMetamer, Normalize, initial_image, tiny_cnn

    if args.tiny:
        model, model_name, layer, size = tiny_cnn(0), "tiny random CNN", args.layer or "3", args.size or 32
    else:
        model, model_name, layer, size = resnet50_shape(), "ResNet-50 shape", args.layer or "layer3", args.size or 224
    model = model.to(device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    generator = torch.Generator().manual_seed(args.seed)
    image = torch.rand(1, 3, size, size, generator=generator).to(device, dtype)
    member = LayerActivations(model, layer, transform=Normalize.imagenet().to(device), name=layer)
    bl.log(f"[{NAME}] {model_name} ({n_params / 1e6:.1f} M parameters), layer {layer}, {size} px, {device}")

    ours = ModelMetamer(image, member, seed=args.seed)
    theirs = po.Metamer(image, member)
    start = initial_image(image.shape, args.seed, device=device, dtype=dtype)  # Feather's noise: ours starts here too
    theirs.setup(initial_image=start)
    cases = {
        "metamergen (Feather recipe)": lambda: ours.synthesize(args.steps),
        "plenoptic Metamer (Adam)": lambda: theirs.synthesize(args.steps, stop_criterion=0.0),
    }
    times = bl.interleaved(cases, repeats=args.repeats, warmup=args.warmup, device=device, log=bl.log)
    peak, method = {}, ""
    for name, fn in cases.items():
        gc.collect()
        with bl.PeakMemory(device) as pm:
            fn()
        peak[name], method = pm.peak_bytes, pm.method

    med = {k: bl.median(v) for k, v in times.items()}
    steps_per_s = {k: args.steps / med[k] for k in cases}
    first, second = list(cases)
    ratio = steps_per_s[first] / steps_per_s[second]
    rows = [
        [
            k,
            f"{steps_per_s[k]:.2f}",
            bl.fmt_x(steps_per_s[k] / steps_per_s[second]),
            f"{peak[k] / 2**20:.0f}",
        ]
        for k in cases
    ]
    table = bl.make_table(
        f"Model metamer synthesis ({model_name}, {layer}, {size} px, {args.dtype}, {device.type})",
        ["loop", "steps/s", "vs plenoptic", "peak MiB above start"],
        rows,
        [
            f"{args.steps} steps per timed call, median of {args.repeats} interleaved repeats after {args.warmup} "
            "warm-up round(s); both loops start from the same image and use the same layer module",
            f"memory: {method}",
        ],
    )
    return bl.finish(
        NAME,
        args,
        device,
        settings=bl.settings_of(args, model=model_name, layer=layer, size=size, parameters=n_params),
        raw_seconds=times,
        median_seconds=med,
        ratios={"metamergen_over_plenoptic_steps_per_s": ratio},
        steps_per_second=steps_per_s,
        peak_memory_bytes=peak,
        memory_method=method,
        table=table,
    )


if __name__ == "__main__":
    main()
