"""SemanIR: image restoration that shares one key-semantic KNN dictionary per stage.

The names below are imported on first access (PEP 562), so that ``import semanir`` and the
``semanir`` command's ``--help`` do not pay for importing torch and the models. Lightning pieces
(``RestorationModule``, ``RestorationDataModule``) live in ``semanir.lightning_module`` and
``semanir.data`` and are not offered here: inference does not pay for importing Lightning.
``register_spandrel`` (``semanir.spandrel_arch``, the ``spandrel`` extra) is left out of
``__all__``: a star import imports nothing of spandrel.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from semanir.export import export_onnx
    from semanir.inference import load_model, restore
    from semanir.io import list_images, read_image, write_image
    from semanir.metrics import psnr, ssim
    from semanir.models import (
        CONFIGS,
        DnCNN,
        DnCNNConfig,
        SemanIR,
        SemanIRConfig,
        build_model,
        get_config,
    )
    from semanir.spandrel_arch import register_spandrel as register_spandrel

__version__ = "0.4.17"

# each public name -> the module that defines it
_HOMES = {
    "export_onnx": "semanir.export",
    "load_model": "semanir.inference",
    "restore": "semanir.inference",
    "list_images": "semanir.io",
    "read_image": "semanir.io",
    "write_image": "semanir.io",
    "psnr": "semanir.metrics",
    "ssim": "semanir.metrics",
    **dict.fromkeys(
        ("CONFIGS", "DnCNN", "DnCNNConfig", "SemanIR", "SemanIRConfig", "build_model",
         "get_config"),
        "semanir.models",
    ),
    "register_spandrel": "semanir.spandrel_arch",
}  # fmt: skip

__all__ = [
    "CONFIGS",
    "DnCNN",
    "DnCNNConfig",
    "SemanIR",
    "SemanIRConfig",
    "__version__",
    "build_model",
    "export_onnx",
    "get_config",
    "list_images",
    "load_model",
    "psnr",
    "read_image",
    "restore",
    "ssim",
    "write_image",
]


# not common_kernels.runtime.lazy.lazy_names: importing common_kernels imports torch (its
# kernels), which ``import semanir`` and ``semanir --help`` must not; and a submodule is an
# attribute here too
def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first access, or a submodule."""
    if name in _HOMES:
        value = getattr(import_module(_HOMES[name]), name)
        globals()[name] = value  # later accesses skip this function
        return value
    try:
        return import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"{__name__}.{name}":
            raise  # a dependency of an existing submodule is missing: say which
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
