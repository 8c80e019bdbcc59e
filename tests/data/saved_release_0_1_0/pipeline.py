# Lets diffusers load this folder: DiffusionPipeline.from_pretrained(folder, custom_pipeline=folder,
# trust_remote_code=True). Needs the metamergen package installed (pip install metamergen).
from diffusers import DiffusionPipeline  # noqa: F401

from metamergen.pipeline import MetamerGenPipeline  # noqa: F401
