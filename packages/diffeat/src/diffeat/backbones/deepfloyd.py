"""DeepFloyd IF stage I (``DeepFloyd/IF-I-L-v1.0``) as a backbone: a diffusers
``UNet2DConditionModel`` in pixel space (no VAE: the 64 x 64 image in [-1, 1] is noised by
its DDPM scheduler), conditioned on T5 embeddings (``encoder_hid_dim``, projected inside the
U-Net, and ``addition_embed_type="text"``). Its catalogue is the U-Net's naming
(:mod:`diffeat.catalogue`); shapes come from the same ``meta`` pass at the pixel size.

:func:`official_if_name` and :func:`if_name_of_official` map diffeat names to the official
code's names of IF activations and back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from diffeat.backbones.unet import UNetBackbone
from diffeat.catalogue import LayerInfo
from diffeat.shapes import layer_infos

IF_TOKENS = 77  # IFPipeline.encode_prompt's T5 max_length


def is_if_unet(config: Mapping[str, Any]) -> bool:
    """An IF-style U-Net: text embeddings added to the time embedding and a text projection
    (``addition_embed_type="text"`` with ``encoder_hid_dim``), which no SD U-Net has."""
    return config.get("addition_embed_type") == "text" and bool(config.get("encoder_hid_dim"))


def is_if_index(index: Mapping[str, Any]) -> bool:
    """A DeepFloyd IF pipeline's ``model_index.json`` (``IFPipeline``, ``IFImg2ImgPipeline``,
    ...), whose U-Net works on pixels (no ``vae``)."""
    name = str(index.get("_class_name", ""))
    return name.startswith("IF") and "unet" in index and "vae" not in index


def check_pixel_options(latent: str = "sample", noising: str = "random") -> None:
    """Refuse the options IF cannot take: a VAE latent mode (no VAE) and DDIM inversion (its
    U-Net predicts noise and variance; not restated).

    Raises:
        ValueError: ``"argument: why"``.
    """
    if latent != "sample":
        raise ValueError(
            f"latent: DeepFloyd IF works in pixel space (no VAE posterior); only 'sample' (the "
            f"default) applies; got {latent!r}"
        )
    if noising != "random":
        raise ValueError(
            "noising: DeepFloyd IF takes 'random' only (its U-Net predicts noise and variance; "
            f"DDIM inversion is not restated for it); got {noising!r}"
        )


class IFBackbone(UNetBackbone):
    """DeepFloyd IF stage I: a pixel-space ``UNet2DConditionModel`` with a T5 text stack."""

    name = "if"
    title = "DeepFloyd IF"
    text_tokens = IF_TOKENS
    adapters = False  # LoRA/ControlNet loading is the SD U-Nets'
    # what the checks read in place of a VAE config: pixels are the U-Net's input (x1, 3 channels)
    pixels: ClassVar[dict[str, Any]] = {"block_out_channels": [3], "latent_channels": 3,
                                        "out_channels": 3}  # fmt: skip

    def native_size(self, config: Mapping[str, Any], vae_scale: int) -> tuple[int, int]:
        """``sample_size`` pixels (64 for stage I): no VAE factor."""
        side = int(config["sample_size"])
        return side, side

    def extra_text_files(self, config: Mapping[str, Any]) -> tuple[str, ...]:
        return ()

    def model_files(self) -> tuple[str, ...]:
        """No ``vae/config.json``: IF works on pixels."""
        return ("model_index.json", "unet/config.json", "scheduler/scheduler_config.json")

    def size_multiple(self, config: Mapping[str, Any], vae_scale: int) -> int:
        """The U-Net's downsampling alone (pixels are its input)."""
        return self.downsampling(config)

    def factors(self, config: Mapping[str, Any], vae_scale: int) -> str:
        return f"pixel space, U-Net x{self.downsampling(config)}"

    def layer_infos(
        self, config: Mapping[str, Any], size: tuple[int, int], text_tokens: int, vae_scale: int
    ) -> list[LayerInfo]:
        return layer_infos(config, size, text_tokens, vae_scale=1)

    def load(
        self, model: str, dtype: torch.dtype, text_stack: bool = True, **load: Any
    ) -> dict[str, Any]:
        """The ``unet``, ``scheduler`` (its config's class) and, with ``text_stack``, the T5
        ``tokenizer`` and ``text_encoder``."""
        import diffusers
        from transformers import AutoTokenizer, T5EncoderModel

        unet = diffusers.UNet2DConditionModel.from_pretrained(
            model, subfolder="unet", torch_dtype=dtype, **load
        )
        config_load = {key: value for key, value in load.items() if key != "variant"}
        config = diffusers.DDPMScheduler.load_config(model, subfolder="scheduler", **config_load)
        scheduler = getattr(diffusers, config["_class_name"]).from_config(config)
        parts: dict[str, Any] = {"unet": unet, "scheduler": scheduler}
        if text_stack:
            parts["tokenizer"] = AutoTokenizer.from_pretrained(
                model, subfolder="tokenizer", **config_load
            )
            parts["text_encoder"] = T5EncoderModel.from_pretrained(
                model, subfolder="text_encoder", torch_dtype=dtype, **load
            )
        return parts


# -- the official code's IF names -------------------------------------------------------------
# The official code names IF's U-Net modules as the SD U-Nets' (``unet-``, ``{stage}-level{i}-
# repeat{j}-res-``, ``-downsampler-``/``-upsampler-``). IF's samplers are resnets, so they
# record ``-increment`` and ``-out`` like the other resnets. IF's attention modules keep their
# added-KV processor, which records nothing there (its ``-vit-block0-cross-*`` names exist only
# when the official code swaps in its plain processor for attention maps, which drops the text
# keys: a different network); diffeat's ``-attn-out`` has no official name.
OFFICIAL_KINDS = ("res-increment", "res-out", "downsampler-increment", "downsampler-out",
                  "upsampler-increment", "upsampler-out")  # fmt: skip
OFFICIAL_UNET = ("unet-in", "unet-after-conv-in", "unet-out")


def _recorded(name: str) -> bool:
    """Whether ``name`` is of a kind the official code records on IF (its U-Net naming)."""
    return name in OFFICIAL_UNET or (
        name.startswith(("down-level", "mid-repeat", "up-level")) and name.endswith(OFFICIAL_KINDS)
    )


def official_if_name(name: str, catalogue: list[str] | None = None) -> str:
    """The official code's name of a diffeat IF activation (the same string: it names IF's
    modules as diffeat does), for the kinds it records there.

    Args:
        name: a diffeat IF name (``down-level1-repeat0-res-out``).
        catalogue: the IF U-Net's names (checked to hold ``name`` when given).

    Raises:
        ValueError: a name the official code does not record on IF (``-attn-out``), or one not
            in ``catalogue``.
    """
    if catalogue is not None and name not in catalogue:
        raise ValueError(f"name: {name!r} is not in this IF U-Net's catalogue")
    if _recorded(name):
        return name
    raise ValueError(
        f"name: {name!r} has no official IF name (the official code records unet-in/"
        "after-conv-in/out and the resnets' and samplers' increment/out on IF; its added-KV "
        "attention records nothing)"
    )


def if_name_of_official(official: str, catalogue: list[str] | None = None) -> str:
    """The diffeat name of an official IF activation name; the inverse of
    :func:`official_if_name`.

    Args:
        official: an official IF name (``up-level2-upsampler-increment``).
        catalogue: the IF U-Net's names (checked to hold the result when given).

    Raises:
        ValueError: an official name diffeat does not record (``-vit-block0-cross-q``: only
            under the official code's plain processor, which drops IF's text keys).
    """
    if _recorded(official) and (catalogue is None or official in catalogue):
        return official
    raise ValueError(
        f"official: {official!r} has no diffeat IF name (IF's official '-vit-block0-cross-*' "
        "features exist only under its plain attention processor, which drops the text keys)"
    )


IF = IFBackbone()
