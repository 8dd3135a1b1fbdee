"""Public names of a package imported on first use (PEP 562), so that ``import package`` and a
command's ``--help`` do not pay for diffusers, transformers or open_clip. This module imports
only the standard library, but importing it runs ``common_kernels/__init__``, which loads torch:
a package that must answer before torch (``semanir --help``) keeps its own ``__getattr__``.

In the package's ``__init__.py``::

    __getattr__, __dir__ = lazy_names(__name__, {"Segmenter": "itaclip.segmenter", ...})
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(
    package: str, modules: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of ``package``: each name of
    ``modules`` is imported from its module when first asked for, then kept in the package.

    Args:
        package: the package's ``__name__``.
        modules: public name -> the module that defines it.
    """

    def __getattr__(name: str) -> Any:
        if name not in modules:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(modules[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *modules})

    return __getattr__, __dir__
