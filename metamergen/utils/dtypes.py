"""Which keyword gives a weight dtype to Hugging Face loaders, by installed version.

diffusers and transformers renamed ``from_pretrained``'s ``torch_dtype`` to ``dtype`` and warn on
every load that still uses the old name; older versions know only ``torch_dtype``. Everything in
MetamerGen that loads weights with a dtype asks :func:`dtype_kwargs` for the argument, so that
ordinary renders print no deprecation warning on new versions and still load on the oldest
versions ``pyproject.toml`` allows.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

__all__ = ["DTYPE_ARGUMENT_SINCE", "dtype_kwargs"]


#: First versions whose ``from_pretrained`` take ``dtype`` (and warn about ``torch_dtype``): diffusers
#: 0.40.0 (diffusers pull request 14205), transformers 4.56.0 (diffusers' own loader switches there too).
DTYPE_ARGUMENT_SINCE = {"diffusers": "0.40.0", "transformers": "4.56.0"}


@functools.cache
def _takes_dtype(library: str) -> bool:
    """Whether ``library``'s ``from_pretrained`` takes ``dtype`` rather than ``torch_dtype``."""
    from importlib.metadata import version

    from packaging.version import Version

    if library == "diffusers":
        from diffusers import DiffusionPipeline

        loader = DiffusionPipeline.from_pretrained
    else:
        from transformers import PreTrainedModel

        loader = PreTrainedModel.from_pretrained
    params = inspect.signature(loader).parameters
    if "dtype" in params or "torch_dtype" in params:  # named in the signature: it says which
        return "dtype" in params
    # both libraries read the argument from **kwargs, so the signature cannot tell: the version does
    return Version(version(library)) >= Version(DTYPE_ARGUMENT_SINCE[library])


def dtype_kwargs(dtype: Any, library: str = "diffusers") -> dict[str, Any]:
    """The keyword argument that gives ``dtype`` to a ``from_pretrained`` of ``library``.

    diffusers (0.40) and transformers (4.56) renamed ``torch_dtype`` to ``dtype`` and warn on every
    load that uses the old name; the versions before only know ``torch_dtype``. The name is chosen
    by the installed version, so that neither prints a deprecation warning.

    Parameters
    ----------
    dtype
        A torch dtype, or ``None`` (no argument: the library's default).
    library
        ``"diffusers"`` (pipelines and ``ModelMixin`` models) or ``"transformers"``.

    Returns
    -------
    dict
        ``{}``, ``{"dtype": dtype}`` or ``{"torch_dtype": dtype}``.
    """
    if library not in DTYPE_ARGUMENT_SINCE:
        raise ValueError(f"Unknown library {library!r}; choose one of {', '.join(DTYPE_ARGUMENT_SINCE)}.")
    if dtype is None:
        return {}
    return {"dtype" if _takes_dtype(library) else "torch_dtype": dtype}
