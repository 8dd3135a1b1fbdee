"""FeatureExtractor: images -> VAE latent -> noise at timestep t -> one U-Net pass -> features."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from diffeat.capture import ActivationRecorder
from diffeat.catalogue import LayerInfo, LayerSpec, build_catalogue, check_names, layer_infos
from diffeat.io import parse_size, to_pixel_batch
from diffeat.presets import default_preset, get_preset
from diffeat.prompts import PromptEmbeddings, PromptEncoder
from diffeat.schedule import NoisePlan, noisy_latents, plan_noise

LATENT_MODES = ("sample", "mean")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class ExtractorConfig:
    """Extraction settings.

    Args:
        layers: activation names to return (see :func:`diffeat.list_layers`).
        timestep: diffusion timestep in ``[0, num_train_timesteps - 1]`` (paper: 50).
        latent: ``"sample"`` (the VAE posterior sample, as the official code) or ``"mean"``.
        faithful: reproduce the official code: its timestep selection (SD 1.5: t=50 -> 51),
            square token reshape, plain attention everywhere when a map is requested.
        early_exit: stop the U-Net once the last requested activation is produced.
        image_size: (H, W) to resize images to; None keeps their size (must then be a multiple
            of ``FeatureExtractor.size_multiple``).
        seed: seed of the generator used when a call passes none (calls are reproducible).
        output_device: device for returned features (None: the model's device).
        preset: the preset the layers came from (informational).
    """

    layers: tuple[str, ...]
    timestep: int = 50
    latent: str = "sample"
    faithful: bool = False
    early_exit: bool = True
    image_size: tuple[int, int] | None = None
    seed: int = 0
    output_device: str | None = None
    preset: str | None = None

    def __post_init__(self) -> None:
        self.layers = tuple(self.layers)
        if self.latent not in LATENT_MODES:
            raise ValueError(f"latent: must be one of {LATENT_MODES}; got {self.latent!r}")
        self.image_size = parse_size(self.image_size)


def names_or_all(layers: Sequence[str] | str) -> tuple[str, ...]:
    """``layers`` as a tuple of names; the string ``"all"`` becomes ``("all",)``."""
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"layers: pass a list of names or 'all'; got the string {layers!r}")
        return ("all",)
    return tuple(layers)


def resolve_layers(
    config: Mapping, layers: Sequence[str] | str | None, preset: str | None
) -> tuple[tuple[str, ...], str | None]:
    """Layer names from ``layers`` (a list, or ``"all"``) or ``preset``; default: the paper's."""
    if layers is not None and preset is not None:
        raise ValueError("pass either layers=[...] or preset=..., not both")
    if layers is not None:
        return names_or_all(layers), None
    preset = preset or default_preset(config)
    return get_preset(preset).layers, preset


class FeatureExtractor:
    """Diffusion U-Net activations of images as (B, C, h, w) features.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (SD 1.x/2.x, SDXL, Playground v2).
        vae: the ``AutoencoderKL`` that made its latents.
        scheduler: the model's scheduler (its ``alphas_cumprod`` is the noise schedule).
        tokenizers: one (SD) or two (SDXL) CLIP tokenizers.
        text_encoders: the matching text encoders.
        config: :class:`ExtractorConfig` (``layers=("all",)`` selects the whole catalogue).
    """

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module,
        scheduler,
        tokenizers: Sequence,
        text_encoders: Sequence[nn.Module],
        config: ExtractorConfig,
    ):
        self.unet = unet.eval()
        self.vae = vae.eval()
        self.scheduler = scheduler
        self.prompt_encoder = PromptEncoder(tokenizers, [e.eval() for e in text_encoders])
        self.catalogue: list[LayerSpec] = build_catalogue(unet)
        config = replace(config, layers=self.expand_all(config.layers))
        check_names(config.layers, self.catalogue)
        self.config = config
        self.plan: NoisePlan = plan_noise(scheduler, config.timestep, config.faithful)
        self._text_time = unet.config.get("addition_embed_type") == "text_time"
        if self._text_time != self.prompt_encoder.dual:
            raise ValueError(
                "text_encoders: SDXL-style U-Nets (text_time conditioning) need two text "
                "encoders, SD-style U-Nets one"
            )

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model_id_or_dir: str | Path,
        layers: Sequence[str] | str | None = None,
        preset: str | None = None,
        timestep: int = 50,
        dtype: torch.dtype | str = torch.float32,
        device: torch.device | str = "cpu",
        **options,
    ) -> FeatureExtractor:
        """Load a diffusers SD/SDXL repository (hub id or local folder) as an extractor.

        The folder needs ``unet/``, ``vae/``, ``scheduler/``, ``text_encoder/`` + ``tokenizer/``
        and, for SDXL-style models, ``text_encoder_2/`` + ``tokenizer_2/``.

        Args:
            model_id_or_dir: e.g. ``stabilityai/stable-diffusion-xl-base-1.0`` or a folder.
            layers: activation names, or ``"all"``; None with no preset: the paper's
                selection for the model's family (``ours-v1.5`` or ``ours-xl``).
            preset: a name from :data:`diffeat.PRESETS`.
            timestep: diffusion timestep (paper: 50).
            dtype: ``torch.float32`` / ``float16`` / ``bfloat16``, or ``"fp32"`` / ``"fp16"`` /
                ``"bf16"``.
            device: where the models run.
            **options: other :class:`ExtractorConfig` fields (``latent``, ``faithful``,
                ``early_exit``, ``image_size``, ``seed``, ``output_device``) and loading options
                passed to every ``from_pretrained`` (``revision``, ``variant``, ``cache_dir``,
                ``local_files_only``, ``token``).
        """
        load_keys = ("revision", "variant", "cache_dir", "local_files_only", "token")
        load = {k: options.pop(k) for k in load_keys if k in options}
        dtype = _as_dtype(dtype)
        components = load_components(str(model_id_or_dir), dtype, **load)
        names, preset = resolve_layers(components["unet"].config, layers, preset)
        config = ExtractorConfig(layers=names, timestep=timestep, preset=preset, **options)
        extractor = cls(config=config, **components)
        return extractor.to(device)

    @classmethod
    def from_pipeline(
        cls, pipe, layers: Sequence[str] | str | None = None, preset: str | None = None, **options
    ) -> FeatureExtractor:
        """Wrap the components of a loaded diffusers SD/SDXL pipeline (no copies)."""
        tokenizers = [t for t in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)) if t]
        encoders = [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e]
        names, preset = resolve_layers(pipe.unet.config, layers, preset)
        config = ExtractorConfig(layers=names, preset=preset, **options)
        return cls(pipe.unet, pipe.vae, pipe.scheduler, tokenizers, encoders, config)

    def to(self, device: torch.device | str) -> FeatureExtractor:
        """Move every model to ``device`` (in place); returns self."""
        for module in (self.unet, self.vae, *self.prompt_encoder.text_encoders):
            module.to(device)
        return self

    # -- properties --------------------------------------------------------------------------
    @property
    def layers(self) -> tuple[str, ...]:
        return self.config.layers

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def vae_scale(self) -> int:
        """Pixels per latent cell (8 for the SD VAEs)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Image height and width must be multiples of this (VAE x U-Net downsampling)."""
        samplers = sum(getattr(b, "downsamplers", None) is not None for b in self.unet.down_blocks)
        return self.vae_scale * 2**samplers

    def layer_infos(self, image_size: int | tuple[int, int] | None = None) -> list[LayerInfo]:
        """The catalogue with feature shapes for ``image_size`` (shape-only ``meta`` pass)."""
        size = parse_size(image_size) or self.config.image_size
        return layer_infos(self.unet, size, self.prompt_encoder.length, self.vae_scale)

    # -- pipeline steps ----------------------------------------------------------------------
    def preprocess(self, images) -> Tensor:
        """Images -> (B, 3, H, W) fp32 pixels in [0, 1] on the model device, size-checked."""
        pixels = to_pixel_batch(images, self.config.image_size)
        height, width = pixels.shape[-2:]
        multiple = self.size_multiple
        if height % multiple or width % multiple:
            raise ValueError(
                f"images: height and width must be multiples of {multiple} for this model "
                f"(VAE x{self.vae_scale}, U-Net x{multiple // self.vae_scale}); got "
                f"{height}x{width}; pass image_size=(H, W) to resize"
            )
        return pixels.to(self.device)

    def _vae_dtype(self) -> torch.dtype:
        dtype = self.dtype
        if dtype == torch.float16 and self.vae.config.get("force_upcast", False):
            return torch.float32
        return dtype

    @torch.no_grad()
    def encode_images(self, pixels: Tensor, generator: torch.Generator) -> Tensor:
        """(B, 3, H, W) pixels in [0, 1] -> scaled fp32 latents (B, 4, H/8, W/8)."""
        vae_dtype = self._vae_dtype()
        if next(self.vae.parameters()).dtype != vae_dtype:
            self.vae.to(vae_dtype)
        posterior = self.vae.encode((pixels * 2 - 1).to(vae_dtype)).latent_dist
        latents = posterior.sample(generator) if self.config.latent == "sample" else posterior.mean
        shift = self.vae.config.get("shift_factor") or 0.0
        return (latents.float() - shift) * self.vae.config.scaling_factor

    def encode_prompts(self, prompts: str | Sequence[str]) -> PromptEmbeddings:
        """Prompt embeddings (computed once per distinct prompt and cached)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return self.prompt_encoder(prompts)

    def sample_noise(self, latents: Tensor, generator: torch.Generator) -> Tensor:
        """Standard-normal fp32 noise shaped like ``latents``, drawn from ``generator``."""
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor(latents.shape, generator=generator, device=latents.device)

    def unet_input(self, latents: Tensor, noise: Tensor) -> Tensor:
        """The U-Net input at the configured timestep (fp32)."""
        return noisy_latents(self.scheduler, self.plan, latents, noise)

    @torch.no_grad()
    def forward_unet(
        self,
        sample: Tensor,
        embeddings: PromptEmbeddings,
        image_size: tuple[int, int],
        layers: Sequence[str] | None = None,
    ) -> dict[str, Tensor]:
        """One U-Net pass on ``sample`` (B, 4, h, w) recording ``layers``.

        Args:
            sample: the (noised) latent.
            embeddings: prompt embeddings (batch 1 or B).
            image_size: (H, W) in pixels (SDXL-style size conditioning).
            layers: names to record (default: the configured ones).
        """
        names = list(self.layers if layers is None else self.expand_all(names_or_all(layers)))
        batch = sample.shape[0]
        embeddings = embeddings.expand(batch).to(self.device, self.dtype)
        kwargs = {}
        if self._text_time:
            if embeddings.pooled is None:
                raise ValueError("embeddings: SDXL-style U-Nets need pooled embeddings")
            height, width = image_size
            time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=self.dtype)
            kwargs["added_cond_kwargs"] = {
                "text_embeds": embeddings.pooled,
                "time_ids": time_ids.to(self.device).expand(batch, -1),
            }
        timestep = torch.tensor(self.plan.timestep, device=self.device)
        recorder = ActivationRecorder(
            self.unet,
            names,
            self.catalogue,
            early_exit=self.config.early_exit,
            square_tokens=self.config.faithful,
            plain_attention=self.config.faithful,
            output_device=self.config.output_device,
        )
        with recorder:
            self.unet(
                sample.to(self.dtype),
                timestep,
                encoder_hidden_states=embeddings.embeds,
                return_dict=False,
                **kwargs,
            )
        return {name: recorder.features[name] for name in names}

    def expand_all(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """``names``, with ``("all",)`` replaced by every catalogue name."""
        return tuple(s.name for s in self.catalogue) if names == ("all",) else names

    def generator(self) -> torch.Generator:
        """A CPU generator seeded with ``config.seed`` (used when a call passes none)."""
        return torch.Generator(device="cpu").manual_seed(self.config.seed)

    def __call__(
        self,
        images,
        prompts: str | Sequence[str] = "",
        generator: torch.Generator | None = None,
        *,
        embeddings: PromptEmbeddings | None = None,
        layers: Sequence[str] | str | None = None,
    ) -> dict[str, Tensor]:
        """Features of a batch of images.

        Args:
            images: PIL image, list of PIL images, or float tensor (B, 3, H, W) in [0, 1].
            prompts: one prompt for all images or one per image (ignored with ``embeddings``).
            generator: draws the VAE posterior sample (``latent="sample"``) and then the noise;
                None uses a fresh generator seeded with ``config.seed``.
            embeddings: precomputed :class:`PromptEmbeddings` (batch 1 or B).
            layers: record these names (or ``"all"``) instead of the configured ones (this
                call only).

        Returns:
            ``{name: (B, C, h, w)}`` in the requested order.
        """
        pixels = self.preprocess(images)
        batch = pixels.shape[0]
        if embeddings is None:
            prompts = [prompts] * batch if isinstance(prompts, str) else list(prompts)
            if len(prompts) != batch:
                raise ValueError(f"prompts: {len(prompts)} prompts for {batch} images")
            embeddings = self.encode_prompts(prompts)
        generator = generator if generator is not None else self.generator()
        latents = self.encode_images(pixels, generator)
        sample = self.unet_input(latents, self.sample_noise(latents, generator))
        return self.forward_unet(sample, embeddings, tuple(pixels.shape[-2:]), layers)


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype: must be fp32, fp16 or bf16; got {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype: must be one of {sorted(DTYPES)}; got {dtype!r}")
    return DTYPES[dtype]


def load_components(model: str, dtype: torch.dtype, **load) -> dict:
    """Load unet, vae, scheduler, tokenizers and text encoders of a diffusers SD/SDXL repo.

    Args:
        model: hub id or local folder.
        dtype: weights dtype.
        **load: passed to every ``from_pretrained`` (revision, variant, cache_dir, ...).
    """
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    variant = load.pop("variant", None)
    unet = UNet2DConditionModel.from_pretrained(
        model, subfolder="unet", torch_dtype=dtype, variant=variant, **load
    )
    vae = AutoencoderKL.from_pretrained(
        model, subfolder="vae", torch_dtype=dtype, variant=variant, **load
    )
    scheduler_config = diffusers.DDPMScheduler.load_config(model, subfolder="scheduler", **load)
    scheduler_cls = getattr(diffusers, scheduler_config["_class_name"])
    scheduler = scheduler_cls.from_config(scheduler_config)
    text_kwargs = dict(load) if variant is None else {**load, "variant": variant}
    tokenizers = [CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", **load)]
    encoders = [CLIPTextModel.from_pretrained(model, subfolder="text_encoder", **text_kwargs)]
    if unet.config.get("addition_embed_type") == "text_time":
        tokenizers.append(CLIPTokenizer.from_pretrained(model, subfolder="tokenizer_2", **load))
        encoders.append(
            CLIPTextModelWithProjection.from_pretrained(
                model, subfolder="text_encoder_2", **text_kwargs
            )
        )
    encoders = [encoder.to(dtype) for encoder in encoders]
    return {
        "unet": unet,
        "vae": vae,
        "scheduler": scheduler,
        "tokenizers": tokenizers,
        "text_encoders": encoders,
    }
