"""Adapter training with Hugging Face Accelerate, in the order the data flows.

- :mod:`~metamergen.training.config`: :class:`TrainConfig` (YAML in ``configs/`` + overrides);
- :mod:`~metamergen.training.data`: images or scanpaths -> VAE pixels, encoder canvas, foveal mask;
- :mod:`~metamergen.training.feature_cache`: VAE latents and DINOv2 tokens computed once per image;
- :mod:`~metamergen.training.loss`: :func:`encode_batch`, :func:`drop_conditions`, :func:`adapter_loss`;
- :mod:`~metamergen.training.checkpoints`: atomic accelerate checkpoints;
- :mod:`~metamergen.training.trainer`: :func:`train`, the loop that assembles them.
"""

from metamergen.utils.lazy import lazy_exports

_EXPORTS = {
    "DataConfig": ".config",
    "ModelConfig": ".config",
    "OptimConfig": ".config",
    "RunConfig": ".config",
    "TrainConfig": ".config",
    "apply_overrides": ".config",
    "AdapterTrainingDataset": ".data",
    "BadSampleError": ".data",
    "SampleSource": ".data",
    "TrainingItem": ".data",
    "collate": ".data",
    "list_images": ".data",
    "vae_pixels": ".data",
    "CachedFeatureDataset": ".feature_cache",
    "cache_features": ".feature_cache",
    "cache_settings": ".feature_cache",
    "check_cache": ".feature_cache",
    "EncodedBatch": ".loss",
    "adapter_loss": ".loss",
    "drop_conditions": ".loss",
    "encode_batch": ".loss",
    "latest_checkpoint": ".checkpoints",
    "save_checkpoint": ".checkpoints",
    "AdapterTrainingModel": ".trainer",
    "build_items": ".trainer",
    "build_optimizer": ".trainer",
    "load_training_pipeline": ".trainer",
    "train": ".trainer",
}

__all__ = sorted(name for name, module in _EXPORTS.items() if module.startswith("."))
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
