"""How tests/data was made: a tiny pipeline saved by release 0.1.0.dev0 (commit 9efd682), before the
package was reorganised, and what it rendered. Kept so that folders saved by that release stay loadable.

Run (from the repository root, with that release installed): python tests/data/make_saved_release.py tests/data/saved_release_0_1_0
"""

import sys

import numpy as np
import torch

from metamergen.testing import tiny_pipeline

out = sys.argv[1]
pipe = tiny_pipeline(seed=0)
pipe.save_pretrained(out)
scene = np.zeros((40, 56, 3), np.uint8)
scene[:, :28] = (200, 40, 40)
scene[10:30, 30:50] = (30, 180, 60)
from PIL import Image

Image.fromarray(scene).save(f"{out}/../saved_release_scene.png")
pipe2 = type(pipe).from_pretrained(out)
r = pipe2(
    image=Image.fromarray(scene),
    fixations=[[[10.0, 12.0], [40.0, 20.0]]],
    num_inference_steps=3,
    generator=torch.Generator().manual_seed(7),
    output_type="np",
    num_images_per_prompt=2,
)
np.save(f"{out}/../saved_release_expected.npy", r.images.astype(np.float32))
print(r.images.shape, float(r.images.mean()))
# The demo-model expectation (demo_model_expected.npy) came from the same release:
#   pipe = MetamerGenPipeline.from_pretrained(<bundled demo model>); pipe(image=<scene>,
#   fixations=[[[10, 12], [40, 20]]], num_inference_steps=4, generator=manual_seed(3), output_type="np")
