"""What diffeat needs to know about a diffusion backbone, apart from extraction.

A :class:`Backbone` says which folder of a diffusers repository holds the denoising network,
which diffusers classes it is (``_class_name`` of its config), which other files a model
folder needs, how big images must be, the network's activation catalogue with shapes (a
shape-only pass on the ``meta`` device) and how its components load. The extraction itself
(VAE latent, noise at timestep t, one recorded pass) is the extractor's
(:class:`diffeat.extraction.BaseFeatureExtractor` and its U-Net and DiT subclasses).

A new backbone is one module beside :mod:`diffeat.backbones.unet` and
:mod:`diffeat.backbones.dit` with one ``Backbone`` subclass, listed in
:data:`diffeat.backbones.BACKBONES`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from diffeat.catalogue import LayerInfo, LayerSpec


class Backbone(abc.ABC):
    """A kind of denoising network (U-Net, diffusion transformer).

    Class attributes:
        name: short name (``"unet"``, ``"dit"``).
        title: its name in messages (``"U-Net"``, ``"PixArt"``).
        subfolder: its folder in a diffusers repository (``"unet"``, ``"transformer"``).
        class_names: the diffusers classes it reads (``_class_name`` of the config).
        text_files: what a model folder needs for prompts (text encoders, tokenizers).
        text_tokens: the prompt length shapes are computed for without a tokenizer.
        adapters: LoRA and ControlNet are supported.
        flow: noised by flow matching at a ``sigma`` (else at a DDPM timestep).
        prefix: the start of every name of its catalogue (None: U-Net names).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    subfolder: ClassVar[str]
    class_names: ClassVar[tuple[str, ...]]
    text_files: ClassVar[tuple[str, ...]]
    text_tokens: ClassVar[int]
    adapters: ClassVar[bool] = False
    flow: ClassVar[bool] = False  # flow-matching noise at a sigma (FLUX, SD3), not DDPM's
    prefix: ClassVar[str | None] = None  # what every name of its catalogue starts with

    def native_size(self, config: Mapping[str, Any], vae_scale: int) -> tuple[int, int]:
        """The (H, W) shapes are listed at by default (``sample_size * vae_scale``)."""
        side = int(config["sample_size"]) * vae_scale
        return side, side

    def prompt_tokens(self, max_sequence_length: int | None) -> int:
        """Text tokens of the network's attention for a prompt length (default: its own)."""
        return max_sequence_length or self.text_tokens

    def owns(self, name: str) -> bool:
        """Whether ``name`` is of this backbone's naming (its :attr:`prefix`)."""
        return self.prefix is not None and name.startswith(self.prefix)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def model_files(self) -> tuple[str, ...]:
        """The config files an extraction reads from a model folder (weights aside)."""
        return (
            "model_index.json",
            f"{self.subfolder}/config.json",
            "vae/config.json",
            "scheduler/scheduler_config.json",
        )

    def extra_text_files(self, config: Mapping[str, Any]) -> tuple[str, ...]:
        """Text files the network's config asks for besides :attr:`text_files` (SDXL: the
        second text encoder)."""
        return ()

    def loader(self) -> Any:
        """The diffusers class whose ``load_config`` reads the network's config."""
        import diffusers

        return getattr(diffusers, self.class_names[0])

    @abc.abstractmethod
    def downsampling(self, config: Mapping[str, Any]) -> int:
        """How many latent cells make one cell of the network's smallest grid, per side."""

    def size_multiple(self, config: Mapping[str, Any], vae_scale: int) -> int:
        """Image sides must be multiples of this: the VAE factor x :meth:`downsampling`."""
        return vae_scale * self.downsampling(config)

    @abc.abstractmethod
    def factors(self, config: Mapping[str, Any], vae_scale: int) -> str:
        """How :meth:`size_multiple` is made, for messages (``"VAE x8, U-Net x8"``)."""

    @abc.abstractmethod
    def catalogue(self, network: nn.Module) -> list[LayerSpec]:
        """Every activation of ``network``, in execution order."""

    @abc.abstractmethod
    def layer_infos(
        self,
        config: Mapping[str, Any],
        size: tuple[int, int],
        text_tokens: int,
        vae_scale: int,
    ) -> list[LayerInfo]:
        """The catalogue with feature shapes for ``size`` images (a ``meta`` pass)."""

    @abc.abstractmethod
    def load(
        self, model: str, dtype: torch.dtype, text_stack: bool = True, **load: Any
    ) -> dict[str, Any]:
        """The components of a diffusers repository, as the extractor's constructor takes
        them (the network, ``vae``, ``scheduler`` and the text stack).

        Args:
            model: hub id or local folder (checked).
            dtype: weights dtype.
            text_stack: load the tokenizers and text encoders.
            **load: passed to every ``from_pretrained`` (``revision``, ``variant``, ...).
        """


class TransformerBackbone(Backbone):
    """A diffusion transformer in ``transformer/`` on a patch grid whose repository
    :func:`load_transformer_repository` loads.

    Class attributes:
        text_encoders: the transformers class of each text encoder, in folder order.
        patch_size: the patch size of a config that names none.
    """

    subfolder = "transformer"
    text_encoders: ClassVar[tuple[str, ...]]
    patch_size: ClassVar[int] = 2

    @property
    def text_files(self) -> tuple[str, ...]:  # type: ignore[override]
        """Each text encoder's config and tokenizer (:func:`text_stack_files`)."""
        return text_stack_files(len(self.text_encoders))

    def downsampling(self, config: Mapping[str, Any]) -> int:
        """The patch size."""
        return int(config.get("patch_size", self.patch_size))

    def factors(self, config: Mapping[str, Any], vae_scale: int) -> str:
        return f"VAE x{vae_scale}, patch {self.downsampling(config)}"

    def load(
        self, model: str, dtype: torch.dtype, text_stack: bool = True, **load: Any
    ) -> dict[str, Any]:
        """``transformer``, ``vae``, ``scheduler`` and (``text_stack``) the ``tokenizers`` and
        ``text_encoders`` of :attr:`text_encoders`."""
        return load_transformer_repository(
            model, self.class_names[0], self.text_encoders, dtype, text_stack, **load
        )


def _suffixes(count: int) -> list[str]:
    """The folder suffixes of ``count`` text encoders: ``""``, then ``"_2"``, ``"_3"``, ..."""
    return ["", *(f"_{index}" for index in range(2, count + 1))]


def text_stack_files(count: int) -> tuple[str, ...]:
    """What a model folder needs for the prompts of ``count`` text encoders: each one's
    ``text_encoder{suffix}/config.json`` and ``tokenizer{suffix}`` (suffix ``""``, ``"_2"``,
    ...)."""
    return tuple(
        file for s in _suffixes(count) for file in (f"text_encoder{s}/config.json", f"tokenizer{s}")
    )


def load_vae_and_scheduler(model: str, dtype: torch.dtype, **load: Any) -> dict[str, Any]:
    """The ``vae`` and ``scheduler`` of a diffusers repository (the scheduler class from its
    config's ``_class_name``).

    Args:
        model: hub id or local folder.
        dtype: weights dtype.
        **load: passed to ``from_pretrained`` (``variant`` included).
    """
    import diffusers

    vae = diffusers.AutoencoderKL.from_pretrained(model, subfolder="vae", torch_dtype=dtype, **load)
    config_load = {key: value for key, value in load.items() if key != "variant"}
    config = diffusers.DDPMScheduler.load_config(model, subfolder="scheduler", **config_load)
    scheduler = getattr(diffusers, config["_class_name"]).from_config(config)
    return {"vae": vae, "scheduler": scheduler}


def load_transformer_repository(
    model: str,
    network: str,
    encoders: tuple[str, ...],
    dtype: torch.dtype,
    text_stack: bool = True,
    **load: Any,
) -> dict[str, Any]:
    """The ``transformer``, ``vae`` and ``scheduler`` of a diffusers repository and (with
    ``text_stack``) its tokenizers and text encoders, ``tokenizer``/``text_encoder`` first,
    then ``_2``, ``_3``: one per class of ``encoders``.

    Args:
        model: hub id or local folder.
        network: the diffusers class of ``transformer/`` (``"FluxTransformer2DModel"``).
        encoders: the transformers class of each text encoder, in folder order.
        dtype: weights dtype.
        text_stack: load the tokenizers and text encoders.
        **load: passed to every ``from_pretrained`` (``variant`` only to the weights).
    """
    import diffusers

    transformer = getattr(diffusers, network).from_pretrained(
        model, subfolder="transformer", torch_dtype=dtype, **load
    )
    parts = {"transformer": transformer, **load_vae_and_scheduler(model, dtype, **load)}
    if not text_stack:
        return parts
    import transformers

    plain = {key: value for key, value in load.items() if key != "variant"}
    suffixes = _suffixes(len(encoders))
    return {
        **parts,
        "tokenizers": [
            transformers.AutoTokenizer.from_pretrained(model, subfolder=f"tokenizer{s}", **plain)
            for s in suffixes
        ],
        "text_encoders": [
            getattr(transformers, name).from_pretrained(
                model, subfolder=f"text_encoder{s}", torch_dtype=dtype, **load
            )
            for name, s in zip(encoders, suffixes, strict=True)
        ],
    }
