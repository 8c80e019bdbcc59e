"""Model metamers: images a *network* cannot tell from a natural image, and the tests they must pass.

- :mod:`~metamergen.metamers.activations`: one layer of any torch model (module path, forward hook;
  torchvision node names when torchvision is installed), its input transform, fake ReLU;
- :mod:`~metamergen.metamers.ensemble`: several models' layers as one module, with the ``mean``,
  ``switch`` and ``random`` schedules and per-member loss normalisation;
- :mod:`~metamergen.metamers.optim`: Feather's normalised, clamped step as a ``torch.optim.Optimizer``;
- :mod:`~metamergen.metamers.recipes`: Feather et al. 2023 (default) and plenoptic's Adam recipe;
- :mod:`~metamergen.metamers.synthesis`: :class:`ModelMetamer` on plenoptic's ``Metamer``
  (needs ``pip install 'metamergen[metamers]'``), resumable;
- :mod:`~metamergen.metamers.null`: the null distribution and Feather's null test;
- :mod:`~metamergen.metamers.recognition`: recognition by the generating and other models, with
  bootstrap intervals;
- :mod:`~metamergen.metamers.similarity`: representational similarity and the Jensen-Shannon shift
  of its distribution from natural images to metamers (Boehm et al. 2025);
- :mod:`~metamergen.metamers.toy`: a tiny random CNN (tests, ``model-metamers --tiny``);
- :mod:`~metamergen.metamers.pretrained`: torchvision, timm and transformers classifiers by name,
  with their own input normalisation (weights download on the user's machine).

``docs/model_metamers.md`` describes the recipes, the tests' semantics and what is plenoptic's.
"""

from metamergen.utils.lazy import lazy_exports

_EXPORTS = {
    "LayerActivations": ".activations",
    "Normalize": ".activations",
    "layer_activations": ".activations",
    "module_paths": ".activations",
    "SCHEDULES": ".ensemble",
    "Ensemble": ".ensemble",
    "normalized_distance": ".ensemble",
    "BlockHalving": ".optim",
    "FeatherStep": ".optim",
    "AdamRecipe": ".recipes",
    "FeatherRecipe": ".recipes",
    "initial_image": ".recipes",
    "recipe_from_dict": ".recipes",
    "ModelMetamer": ".synthesis",
    "layer_metamers": ".synthesis",
    "MEASURES": ".null",
    "NullDistribution": ".null",
    "NullTest": ".null",
    "null_distribution": ".null",
    "null_test": ".null",
    "similarity": ".null",
    "Classifier": ".recognition",
    "Recognition": ".recognition",
    "predict": ".recognition",
    "recognition_accuracy": ".recognition",
    "recognition_from_correct": ".recognition",
    "recognition_table": ".recognition",
    "tiny_cnn": ".toy",
    "SimilarityShift": ".similarity",
    "representational_similarity": ".similarity",
    "similarity_shift": ".similarity",
    "PretrainedModel": ".pretrained",
    "load_pretrained": ".pretrained",
}

__all__ = sorted(name for name, module in _EXPORTS.items() if module.startswith("."))
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
