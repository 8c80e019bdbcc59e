"""The toy world and the bundled demo model: MetamerGen end to end, offline, on a CPU.

- :mod:`~metamergen.demo.toyworld`: seeded toy scenes (layouts a periphery can convey, small
  objects that need the fovea), toy-viewer scanpaths, object attributes;
- :mod:`~metamergen.demo.toymodel`: the demo model's components and its base-stage trainers;
- :mod:`~metamergen.demo.measures`: object-level measures (registered with the metric registry);
- :mod:`~metamergen.demo.run`: ``metamergen demo``;
- :mod:`~metamergen.demo.metamer_models`: the model-metamers miniature's toy-object classifiers (a
  CNN, its adversarially trained copy, a tiny ViT, a held-out CNN), their data and training.

Nothing in the model, the trainer or the core evaluation imports this package.
"""

from metamergen.utils.lazy import lazy_exports

_EXPORTS = {
    "DEMO_METRICS": ".run",
    "DEMO_MODEL": ".run",
    "DemoResult": ".run",
    "demo_model_info": ".run",
    "load_demo_pipeline": ".run",
    "run_demo": ".run",
    "write_demo_scenes": ".run",
    "TOY_METRICS": ".measures",
    "fixation_averaged": ".measures",
    "object_scores": ".measures",
    "own_vs_other": ".measures",
    "toy_scores": ".measures",
    "ToyObject": ".toyworld",
    "ToyScene": ".toyworld",
    "ToyWorldConfig": ".toyworld",
    "generate_scene": ".toyworld",
    "object_colour_match": ".toyworld",
    "read_objects": ".toyworld",
    "scene_seeds": ".toyworld",
    "write_split": ".toyworld",
    "write_world": ".toyworld",
    "DemoModelConfig": ".toymodel",
    "assemble_pipeline": ".toymodel",
    "crop_dataset": ".metamer_models",
    "load_miniature_models": ".metamer_models",
    "pgd_attack": ".metamer_models",
    "small_cnn": ".metamer_models",
    "tiny_vit": ".metamer_models",
    "train_miniature_models": ".metamer_models",
}

__all__ = sorted(name for name, module in _EXPORTS.items() if module.startswith("."))
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
