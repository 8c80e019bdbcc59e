"""One-step checks of what the demo model learned, on held-out toy scenes (the README's tables).

    python inference/demo_diagnostics.py                      # the bundled model, 16 held-out scenes
    python inference/demo_diagnostics.py --model outputs/m --scenes 8

Prints three tables, each from :mod:`metamergen.evaluation.diagnostics` (one-step ``x0`` estimates
of noised latents, the same noise for every condition compared):

1. **conditioning**: latent error from each scene's own tokens vs another scene's, per noise level
   (:func:`~metamergen.evaluation.diagnostics.conditioning_reconstruction`);
2. **streams**: error in the latent cells under the fixated patches with both streams, the
   periphery alone, the fovea alone and neither
   (:func:`~metamergen.evaluation.diagnostics.stream_contributions`);
3. **localisation**: how much more the foveal stream changes the fixated cells than the others
   (:func:`~metamergen.evaluation.diagnostics.foveal_localisation`; 1 = no localisation).

Fixations are on every object's centre; the periphery at the demo's s = 1/8. About a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from metamergen.demo.run import DEMO_MODEL, DEMO_PERIPHERAL_BLUR, demo_model_info, load_demo_pipeline  # noqa: E402
from metamergen.demo.toyworld import ToyWorldConfig, generate_scene, scene_seeds  # noqa: E402
from metamergen.evaluation.diagnostics import (  # noqa: E402
    conditioning_reconstruction,
    foveal_localisation,
    stream_contributions,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(DEMO_MODEL))
    p.add_argument("--scenes", type=int, default=16, help="held-out scenes (the test split's first ones)")
    args = p.parse_args(argv)
    info = demo_model_info(args.model)
    pipe = load_demo_pipeline(args.model)
    world = ToyWorldConfig.from_dict(info["world"])
    scenes = [generate_scene(s, world) for s in scene_seeds(2 * info["seed"] + 1, args.scenes)]  # the test split
    images = [s.image for s in scenes]
    fixations = [[o.centre for o in s.objects] for s in scenes]
    print(f"{args.model}: {len(scenes)} held-out scenes, fixations on every object, s = {DEMO_PERIPHERAL_BLUR}\n")

    print("1. conditioning: one-step latent error from the scene's own tokens vs another scene's")
    print("| noise level t | own tokens | another scene's tokens | scenes where own is better |")
    print("|---|---|---|---|")
    for t in (300, 500, 700, 900):
        r = conditioning_reconstruction(pipe, images, fixations, timesteps=(t,), peripheral_blur=DEMO_PERIPHERAL_BLUR)
        better = round(r["own_better"] * len(scenes))
        print(f"| {t} | {r['own']:.3f} | {r['other']:.3f} | {better}/{len(scenes)} |")

    s = stream_contributions(pipe, images, fixations, peripheral_blur=DEMO_PERIPHERAL_BLUR)
    print("\n2. streams: one-step latent error, whole latent and the cells under the fixated patches")
    print("| streams | whole | fixated cells |")
    print("|---|---|---|")
    for cond in ("both", "peripheral", "foveal", "none"):
        print(f"| {cond} | {s[cond]['whole']:.3f} | {s[cond]['fixated']:.3f} |")
    gain = s["foveal_gain"] / s["peripheral"]["fixated"]
    print(
        f"foveal gain in the fixated cells (peripheral - both): {s['foveal_gain']:.3f} ({gain:.0%}), "
        f"positive in {round(s['foveal_gain_share'] * len(scenes))}/{len(scenes)} scenes"
    )

    loc = foveal_localisation(pipe, images, fixations, peripheral_blur=DEMO_PERIPHERAL_BLUR)
    area = sum(loc["area_share_per_scene"]) / len(scenes)
    share = sum(loc["share_inside_per_scene"]) / len(scenes)
    print(
        f"\n3. localisation: the foveal stream changes a fixated cell {loc['ratio']:.2f}x as much as another "
        f"(1 = no localisation); fixated cells hold {share:.0%} of its change and {area:.0%} of the cells"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
