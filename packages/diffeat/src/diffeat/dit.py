"""Diffusion transformers (DiT): PixArt-Sigma's ``PixArtTransformer2DModel`` as a feature source.

The catalogue follows the U-Net's naming (execution order):

* ``dit-in`` (the noisy latent fed to the transformer), ``dit-after-patch-embed`` (the patch
  embedding plus positional embedding, as a (B, C, h/p, w/p) map);
* per transformer block ``k``: ``dit-block{k}-{self-q|self-k|self-v|self-map|cross-q|cross-map|
  ffn-inner|out}`` (q/k/v right after ``to_q``/``to_k``/``to_v``; maps ``(B, heads * keys, h,
  w)``; ``ffn-inner`` the GELU output, 4C wide; ``out`` the block output);
* ``dit-out``: the transformer output after unpatchifying, (B, out_channels, h, w) (PixArt:
  noise and variance, 8 channels).

Token grids are the patch grid (h / patch, w / patch) of the actual input, so non-square inputs
work. Cross-attention keys are the T5 tokens (``max_sequence_length``, 300 for PixArt-Sigma),
padded tokens masked as in diffusers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from common_kernels.runtime.quiet import quiet_loading
from diffeat.capture import ActivationRecorder
from diffeat.catalogue import LayerInfo, LayerSpec, check_names
from diffeat.checks import VAE_SPEC, resolve_source
from diffeat.extractor import FeatureExtractor
from diffeat.features import Features
from diffeat.plan import ExtractorConfig, as_dtype, resolve_layers
from diffeat.presets import ALL, default_preset, get_preset
from diffeat.prompts import PromptEmbeddings, T5PromptEncoder
from diffeat.schedule import plan_noise

DIT_TOKENS = 300  # PixArt-Sigma's max_sequence_length (T5 tokens), used without a tokenizer


def _check_dit(transformer: nn.Module) -> None:
    from diffusers.models.attention import BasicTransformerBlock

    for attr in ("pos_embed", "transformer_blocks", "proj_out"):
        if not hasattr(transformer, attr):
            raise ValueError(
                f"transformer: {type(transformer).__name__} has no {attr!r}; diffeat reads "
                "diffusers PixArtTransformer2DModel transformers (PixArt-Sigma / PixArt-alpha)"
            )
    for k, block in enumerate(transformer.transformer_blocks):
        if not isinstance(block, BasicTransformerBlock):
            raise ValueError(
                f"transformer_blocks.{k}: {type(block).__name__} is not supported (PixArt "
                "BasicTransformerBlocks; SD3-style MMDiT joint blocks are not)"
            )


def _check_parts(transformer: nn.Module, vae: nn.Module, text_encoder: nn.Module | None) -> None:
    """Raise when the VAE or the T5 encoder does not fit the transformer."""
    config = transformer.config
    latent = vae.config.latent_channels
    if latent != config.in_channels:
        raise ValueError(
            f"vae: its {latent} latent channels do not match the transformer's in_channels "
            f"{config.in_channels}"
        )
    width = getattr(getattr(text_encoder, "config", None), "d_model", None)
    if text_encoder is not None and width != config.caption_channels:
        raise ValueError(
            f"text_encoder: its width {width} does not match the transformer's "
            f"caption_channels {config.caption_channels} (PixArt-Sigma: T5-XXL, 4096)"
        )


def build_dit_catalogue(transformer: nn.Module) -> list[LayerSpec]:
    """Every activation of a PixArt-style transformer, in execution order.

    Args:
        transformer: a diffusers ``PixArtTransformer2DModel`` (real, random or ``meta``).

    Returns:
        The catalogue entries (PixArt-Sigma, 28 blocks: ``3 + 8 * 28 = 227``).
    """
    _check_dit(transformer)
    specs = [
        LayerSpec("dit-in", "unet-in", "", "dit"),
        LayerSpec("dit-after-patch-embed", "patch-embed", "pos_embed", "dit"),
    ]
    for k, block in enumerate(transformer.transformer_blocks):
        path = f"transformer_blocks.{k}"
        kinds = [("self-q", "attn1"), ("self-k", "attn1"), ("self-v", "attn1")]
        kinds.append(("self-map", "attn1"))
        if block.attn2 is not None:
            kinds += [("cross-q", "attn2"), ("cross-map", "attn2")]
        kinds += [("ffn-inner", "ff.net.0"), ("block-out", "")]
        for kind, sub in kinds:
            suffix = "out" if kind == "block-out" else kind
            module = f"{path}.{sub}" if sub else path
            specs.append(LayerSpec(f"dit-block{k}-{suffix}", kind, module, "dit", block=k))
    specs.append(LayerSpec("dit-out", "dit-out", "", "dit"))
    return specs


def _meta_dit(config: Mapping[str, Any]) -> nn.Module:
    from diffusers import PixArtTransformer2DModel

    with torch.device("meta"):
        return PixArtTransformer2DModel.from_config(dict(config)).eval()


def _dit_kwargs(transformer: nn.Module, batch: int, size: tuple[int, int], device) -> dict:
    """``added_cond_kwargs`` as the PixArt pipelines pass them (resolution and aspect ratio
    only where the model uses additional conditions: PixArt-alpha at 1024 px)."""
    if not getattr(transformer, "use_additional_conditions", False):
        return {"resolution": None, "aspect_ratio": None}
    height, width = size
    resolution = torch.tensor([[height, width]], dtype=torch.float32, device=device)
    aspect = torch.tensor([[height / width]], dtype=torch.float32, device=device)
    return {"resolution": resolution.repeat(batch, 1), "aspect_ratio": aspect.repeat(batch, 1)}


def dit_layer_infos(
    transformer_or_config: nn.Module | Mapping[str, Any],
    image_size: int | tuple[int, int] | None = None,
    text_tokens: int = DIT_TOKENS,
    vae_scale: int = 8,
) -> list[LayerInfo]:
    """The DiT catalogue with feature shapes, from a shape-only pass on the ``meta`` device.

    Args:
        transformer_or_config: a ``PixArtTransformer2DModel`` (its config is used) or config.
        image_size: input size in pixels (default: ``sample_size * vae_scale``).
        text_tokens: T5 tokens per prompt.
        vae_scale: pixels per latent cell.
    """
    config = dict(getattr(transformer_or_config, "config", transformer_or_config))
    if image_size is None:
        image_size = config["sample_size"] * vae_scale
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    multiple = vae_scale * config.get("patch_size", 1)
    if height % multiple or width % multiple:
        raise ValueError(f"image_size: {height}x{width} is not a multiple of {multiple}")
    model = _meta_dit(config)
    catalogue = build_dit_catalogue(model)
    latent = torch.empty(
        1, config["in_channels"], height // vae_scale, width // vae_scale, device="meta"
    )
    context = torch.empty(1, text_tokens, config["caption_channels"], device="meta")
    recorder = ActivationRecorder(model, [s.name for s in catalogue], catalogue, early_exit=False)
    with torch.no_grad(), recorder:
        model(
            latent,
            encoder_hidden_states=context,
            timestep=torch.zeros(1, device="meta"),
            added_cond_kwargs=_dit_kwargs(model, 1, (height, width), "meta"),
            return_dict=False,
        )
    heads = recorder.attention_heads()
    return [
        LayerInfo(spec, tuple(recorder.features[spec.name].shape[1:]), heads.get(spec.name))
        for spec in catalogue
    ]


class DiTFeatureExtractor(FeatureExtractor):
    """Activations of a PixArt-style diffusion transformer as (B, C, h, w) features.

    Same steps as :class:`FeatureExtractor` (VAE latent, exact noise at timestep t from a
    generator, one pass with early exit, ``vae-out``, ``requires_grad``), with the T5 text path:
    prompts are encoded by one T5 encoder padded to ``max_sequence_length`` tokens and the
    padding is masked in cross-attention; precomputed ``PromptEmbeddings(embeds, mask=...)``
    work without a text stack. ``extractor.unet`` is the transformer (also
    ``extractor.transformer``).

    Not supported here (each raises): ``faithful=True`` (the official code's PixArt path is not
    restated), LoRA, ControlNet, SDXL-style size conditioning.

    Args:
        transformer: a diffusers ``PixArtTransformer2DModel``.
        vae: its ``AutoencoderKL`` (PixArt-Sigma: the SDXL VAE).
        scheduler: its scheduler (``alphas_cumprod`` is the noise schedule).
        tokenizer: the T5 tokenizer, or None (with ``text_encoder=None``).
        text_encoder: the ``T5EncoderModel``, or None.
        config: :class:`ExtractorConfig`; None: the ``diffeat-pixart-sigma`` preset.
        max_sequence_length: T5 tokens per prompt (PixArt-Sigma 300, PixArt-alpha 120).
    """

    def __init__(
        self,
        transformer: nn.Module,
        vae: nn.Module,
        scheduler,
        tokenizer=None,
        text_encoder: nn.Module | None = None,
        config: ExtractorConfig | None = None,
        *,
        max_sequence_length: int = DIT_TOKENS,
    ):
        self.unet = self.transformer = transformer.eval()
        self.vae = vae.eval()
        self.scheduler = scheduler
        self.controlnet, self.control_scale, self.control_image = None, 1.0, None
        self.control_catalogue: list[LayerSpec] = []
        self.loras: dict[str, float] = {}
        self.fused_loras: list[str] = []
        if (tokenizer is None) != (text_encoder is None):
            raise ValueError(
                "tokenizer/text_encoder: give both (prompts are encoded) or neither (calls "
                "pass precomputed embeddings=)"
            )
        self.prompt_encoder = None
        if tokenizer is not None:
            self.prompt_encoder = T5PromptEncoder(
                tokenizer, text_encoder.eval(), max_sequence_length
            )
        self.max_sequence_length = max_sequence_length
        self.catalogue = build_dit_catalogue(transformer)
        _check_parts(transformer, vae, text_encoder)
        if config is None:
            preset = default_preset(transformer.config)
            config = ExtractorConfig(layers=get_preset(preset).layers, preset=preset)
        if config.faithful:
            raise ValueError(
                "faithful: the official code's PixArt path is not restated by diffeat; use "
                "faithful=False for DiTs"
            )
        self._all_layers = config.layers == (ALL,)
        config = replace(config, layers=self.expand_all(config.layers))
        check_names(config.layers, self.activations)
        self.config = config
        self.plan = plan_noise(scheduler, config.timestep, False)
        self._text_time = False

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
        text_stack: bool = True,
        max_sequence_length: int = DIT_TOKENS,
        **options,
    ) -> DiTFeatureExtractor:
        """Load a diffusers PixArt repository (``transformer/``, ``vae/``, ``scheduler/``,
        ``text_encoder/`` + ``tokenizer/``; the last two not with ``text_stack=False``).

        The real PixArt tokenizer is a sentencepiece model: install ``diffeat[t5]``
        (sentencepiece, protobuf) to load it. Other arguments as
        :meth:`FeatureExtractor.from_pretrained`.
        """
        import diffusers
        from diffusers import AutoencoderKL, PixArtTransformer2DModel

        for key in ("lora", "lora_scale", "fuse_lora", "controlnet", "control_scale"):
            if key in options:
                raise ValueError(f"{key}: LoRA and ControlNet are not supported for DiTs")
        load_keys = ("revision", "variant", "cache_dir", "local_files_only", "token")
        load = {k: options.pop(k) for k in load_keys if k in options}
        variant = load.pop("variant", None)
        dtype = as_dtype(dtype)
        source = resolve_source(model_id_or_dir, "model_id_or_dir")  # the hub rule
        model = str(source)
        if isinstance(source, Path) and not (source / "transformer" / "config.json").is_file():
            unet = (source / "unet").is_dir()
            raise ValueError(
                f"model: {model} has no transformer/config.json, so it is no PixArt folder"
                + ("; it holds a U-Net: use FeatureExtractor.from_pretrained" if unet else "")
            )
        with quiet_loading():
            transformer = PixArtTransformer2DModel.from_pretrained(
                model, subfolder="transformer", torch_dtype=dtype, variant=variant, **load
            )
            vae = AutoencoderKL.from_pretrained(
                model, subfolder="vae", torch_dtype=dtype, variant=variant, **load
            )
            scheduler_config = diffusers.DDPMScheduler.load_config(
                model, subfolder="scheduler", **load
            )
            scheduler = getattr(diffusers, scheduler_config["_class_name"]).from_config(
                scheduler_config
            )
            tokenizer = encoder = None
            if text_stack:
                from transformers import AutoTokenizer, T5EncoderModel

                tokenizer = AutoTokenizer.from_pretrained(model, subfolder="tokenizer", **load)
                text_kwargs = dict(load) if variant is None else {**load, "variant": variant}
                encoder = T5EncoderModel.from_pretrained(
                    model, subfolder="text_encoder", torch_dtype=dtype, **text_kwargs
                )
        names, preset = resolve_layers(transformer.config, layers, preset)
        config = ExtractorConfig(layers=names, timestep=timestep, preset=preset, **options)
        extractor = cls(
            transformer,
            vae,
            scheduler,
            tokenizer,
            encoder,
            config,
            max_sequence_length=max_sequence_length,
        )
        return extractor.to(device)

    @classmethod
    def from_pipeline(
        cls, pipe, layers: Sequence[str] | str | None = None, preset: str | None = None, **options
    ) -> DiTFeatureExtractor:
        """Wrap a loaded diffusers ``PixArtSigmaPipeline`` / ``PixArtAlphaPipeline``."""
        names, preset = resolve_layers(pipe.transformer.config, layers, preset)
        length = options.pop("max_sequence_length", DIT_TOKENS)
        config = ExtractorConfig(layers=names, preset=preset, **options)
        return cls(
            pipe.transformer,
            pipe.vae,
            pipe.scheduler,
            pipe.tokenizer,
            pipe.text_encoder,
            config,
            max_sequence_length=length,
        )

    def load_lora(self, source, *args, **kwargs) -> str:
        raise ValueError("lora: LoRA loading is supported for U-Nets only, not for DiTs")

    def set_controlnet(self, controlnet, scale: float = 1.0, image=None) -> None:
        if controlnet is not None:
            raise ValueError("controlnet: ControlNets are supported for U-Nets only, not DiTs")

    # -- shapes ------------------------------------------------------------------------------
    @property
    def patch_size(self) -> int:
        return int(self.transformer.config.patch_size)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (VAE x patch size)."""
        return self.vae_scale * self.patch_size

    def layer_infos(
        self, image_size: int | tuple[int, int] | None = None, text_tokens: int | None = None
    ) -> list[LayerInfo]:
        """``vae-out`` and the DiT catalogue with feature shapes (shape-only ``meta`` pass)."""
        from diffeat.io import parse_size

        scale = self.vae_scale
        size = parse_size(image_size) or self.config.image_size
        size = size or (self.transformer.config.sample_size * scale,) * 2
        tokens = text_tokens or self.max_sequence_length
        infos = dit_layer_infos(self.transformer, size, tokens, scale)
        return [LayerInfo(VAE_SPEC, self.vae_out_shape(size)), *infos]

    # -- the pass ----------------------------------------------------------------------------
    def _check_embeddings(self, embeddings: PromptEmbeddings) -> None:
        if not isinstance(embeddings, PromptEmbeddings):
            raise TypeError(
                f"embeddings: expected PromptEmbeddings; got {type(embeddings).__name__}"
            )
        width = self.transformer.config.caption_channels
        embeds = embeddings.embeds
        if embeds.numel() == 0:
            raise ValueError(f"embeddings: empty tensor {tuple(embeds.shape)}")
        if embeds.ndim != 3 or embeds.shape[-1] != width:
            raise ValueError(
                f"embeddings: embeds must be (B, L, {width}) (the transformer's "
                f"caption_channels, T5's width); got {tuple(embeds.shape)}"
            )
        mask = embeddings.mask
        if mask is not None and tuple(mask.shape) != tuple(embeds.shape[:2]):
            raise ValueError(
                f"embeddings: mask must be (B, L) = {tuple(embeds.shape[:2])}; got "
                f"{tuple(mask.shape)}"
            )

    def _run_models(
        self, sample, embeddings, image_size, names, original_size, target_size, full_output,
        control,
    ) -> tuple[Features, Tensor | None]:  # fmt: skip
        self._size_conditioning(original_size, target_size)  # DiTs take none: raises
        batch = sample.shape[0]
        self._check_embeddings(embeddings)
        embeddings = embeddings.expand(batch).to(self.device, self.dtype)
        timestep = torch.tensor(self.plan.timestep, device=self.device).expand(batch)
        kwargs = _dit_kwargs(self.transformer, batch, tuple(image_size), self.device)

        def run():
            return self.transformer(
                sample.to(self.dtype),
                encoder_hidden_states=embeddings.embeds,
                encoder_attention_mask=embeddings.mask,
                timestep=timestep,
                added_cond_kwargs=kwargs,
                return_dict=False,
            )[0]

        if not names:
            return Features(), run()
        recorder = ActivationRecorder(
            self.transformer,
            names,
            self.catalogue,
            early_exit=self.config.early_exit and not full_output,
            output_device=self.config.output_device,
            detach=not self.config.requires_grad,
        )
        output = None
        with recorder:
            output = run()
        features = {name: recorder.features[name] for name in names}
        return Features(features, recorder.attention_heads()), output
