"""Public names of a package, declared once and imported on first use (PEP 562).

Every ``metamergen`` package ``__init__`` lists its public names with the module that defines them
and hands the list to :func:`lazy_exports`. Nothing heavy (torch, diffusers, transformers) is
imported until a name is used, so ``metamergen --help`` starts in a fraction of a second while
``from metamergen import MetamerGenPipeline`` works as usual. Written here, not taken from
diffusers' ``_LazyModule``, because that one replaces the module object in ``sys.modules``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` whose public ``name`` lives in ``exports[name]``.

    Parameters
    ----------
    package
        The package's ``__name__``.
    exports
        Public name -> module that defines it: relative to ``package`` when it starts with ``.``,
        else absolute (e.g. ``"diffusers"`` for a name a loader looks up by name here).
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = exports[name]
        value = getattr(importlib.import_module(module, package if module.startswith(".") else None), name)
        globals_ = importlib.import_module(package).__dict__
        globals_[name] = value  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(exports) | set(importlib.import_module(package).__dict__))

    return __getattr__, __dir__
