"""FeatureExtractor: the activations of a diffusion U-Net (diffusers ``UNet2DConditionModel``)
as features, with LoRA and ControlNet (:class:`~diffeat.extractor_adapters.AdapterMixin`); the
steps every backbone shares are :class:`diffeat.extraction.BaseFeatureExtractor`'s.
``FeatureExtractor.from_pretrained`` loads any backbone (a PixArt model gives a
:class:`diffeat.DiTFeatureExtractor`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from common_kernels.runtime.quiet import quiet_loading
from diffeat.backbones.unet import UNET, is_text_time, load_components
from diffeat.capture import ActivationRecorder
from diffeat.catalogue import CONTROL_PREFIX, LayerInfo, LayerSpec, build_catalogue
from diffeat.checks import TEXT_TOKENS, VAE_SPEC
from diffeat.extraction import VAE_OUT, BaseFeatureExtractor, check_text_stack
from diffeat.extractor_adapters import AdapterMixin
from diffeat.features import Features
from diffeat.io import parse_size
from diffeat.loading import LOAD_KEYS, load_controlnet
from diffeat.plan import (
    LATENT_MODES,
    ExtractorConfig,
    LoadPlan,
    check_from_pretrained,
    names_or_all,
    resolve_layers,
)
from diffeat.prompts import PromptEncoder
from diffeat.shapes import control_layer_infos, layer_infos

__all__ = [  # check_from_pretrained and the plan's types, importable from here as before
    "LATENT_MODES", "VAE_OUT", "ExtractorConfig", "FeatureExtractor", "LoadPlan",
    "check_from_pretrained", "load_components", "names_or_all", "quiet_loading",
]  # fmt: skip


class FeatureExtractor(AdapterMixin, BaseFeatureExtractor):
    """Diffusion U-Net activations of images as (B, C, h, w) features.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (SD 1.x/2.x, SDXL, Playground v2).
        vae: the ``AutoencoderKL`` that made its latents.
        scheduler: the model's scheduler (its ``alphas_cumprod`` is the noise schedule).
        tokenizers: one (SD) or two (SDXL) CLIP tokenizers; None (with
            ``text_encoders=None``) for an extractor fed precomputed ``embeddings=`` only.
        text_encoders: the matching text encoders, or None.
        config: :class:`ExtractorConfig`; None: the paper's preset for the U-Net's family.
        controlnet: a diffusers ``ControlNetModel`` for this U-Net (see :meth:`set_controlnet`);
            calls then take ``control_image=``.
        control_scale: the ControlNet's ``conditioning_scale``.
    """

    backbone = UNET
    picks_backbone = True

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module,
        scheduler,
        tokenizers: Sequence | None = None,
        text_encoders: Sequence[nn.Module] | None = None,
        config: ExtractorConfig | None = None,
        *,
        controlnet: nn.Module | None = None,
        control_scale: float = 1.0,
    ):
        self.unet = unet.eval()
        self.control_catalogue: list[LayerSpec] = []
        self.loras: dict[str, float] = {}  # unfused adapters and their scales
        self.fused_loras: list[str] = []
        self.vae = vae.eval()
        self.scheduler = scheduler
        check_text_stack(tokenizers, text_encoders, "tokenizers/text_encoders")
        self.prompt_encoder: PromptEncoder | None = None
        if tokenizers is not None:
            self.prompt_encoder = PromptEncoder(tokenizers, [e.eval() for e in text_encoders])
        self.catalogue: list[LayerSpec] = build_catalogue(unet)
        if controlnet is not None:
            self.set_controlnet(controlnet, control_scale)
        self._configure(config)
        self._text_time = is_text_time(unet.config)
        if self.prompt_encoder is not None and self._text_time != self.prompt_encoder.dual:
            raise ValueError(
                "text_encoders: SDXL-style U-Nets (text_time conditioning) need two text "
                "encoders, SD-style U-Nets one"
            )

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def _from_components(
        cls, plan: LoadPlan, components: dict[str, Any], options: dict[str, Any]
    ) -> FeatureExtractor:
        """The U-Net extractor of loaded components, with the plan's ControlNet and LoRAs."""
        controlnet = options.pop("controlnet", None)
        control_scale = options.pop("control_scale", 1.0)
        control_image = options.pop("control_image", None)
        loras = options.pop("lora", None)
        lora_scale = options.pop("lora_scale", 1.0)
        fuse = options.pop("fuse_lora", False)
        if isinstance(controlnet, str | Path):
            load = {k: plan.options[k] for k in LOAD_KEYS if k in plan.options}
            with quiet_loading():
                controlnet = load_controlnet(
                    str(controlnet), plan.dtype, components["unet"].config, **load
                )
        config = ExtractorConfig(
            layers=plan.requested, timestep=plan.timestep, preset=plan.preset, **options
        )
        extractor = cls(
            config=config, controlnet=controlnet, control_scale=control_scale, **components
        )
        if control_image is not None:
            extractor.control_image = control_image
        if loras is not None:
            for lora in loras if isinstance(loras, list | tuple) else [loras]:
                extractor.load_lora(lora, scale=lora_scale, fuse=fuse)
        return extractor

    @classmethod
    def from_pipeline(
        cls, pipe, layers: Sequence[str] | str | None = None, preset: str | None = None, **options
    ) -> FeatureExtractor:
        """Wrap the components of a loaded diffusers SD/SDXL pipeline (no copies).

        A ControlNet pipeline's ``controlnet`` is used (or pass ``controlnet=``, and
        ``control_scale=``).

        A pipeline without tokenizers and text encoders (``None``) gives an extractor that
        takes precomputed ``embeddings=`` only.
        """
        tokenizers = [t for t in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)) if t]
        encoders = [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e]
        names, preset = resolve_layers(pipe.unet.config, layers, preset)
        control_scale = options.pop("control_scale", 1.0)
        controlnet = options.pop("controlnet", getattr(pipe, "controlnet", None))
        config = ExtractorConfig(layers=names, preset=preset, **options)
        return cls(
            pipe.unet,
            pipe.vae,
            pipe.scheduler,
            tokenizers or None,
            encoders or None,
            config,
            controlnet=controlnet,
            control_scale=control_scale,
        )

    @property
    def text_tokens(self) -> int:
        """The prompt length: the tokenizer's (77 without a text stack)."""
        return TEXT_TOKENS if self.prompt_encoder is None else self.prompt_encoder.length

    def layer_infos(
        self, image_size: int | tuple[int, int] | None = None, text_tokens: int | None = None
    ) -> list[LayerInfo]:
        """``vae-out`` and the U-Net catalogue with feature shapes (shape-only ``meta`` pass).

        Args:
            image_size: input size in pixels; default: ``config.image_size``, else the native
                size (``sample_size * vae_scale``).
            text_tokens: prompt length; default: the tokenizer's (77 without a text stack).
        """
        scale = self.vae_scale
        size = parse_size(image_size) or self.config.image_size
        size = size or (self.unet.config.sample_size * scale,) * 2
        text_tokens = text_tokens or self.text_tokens
        unet_infos = layer_infos(self.unet, size, text_tokens, scale)
        control = []
        if self.controlnet is not None:
            control = control_layer_infos(self.controlnet, size, text_tokens, scale)
        return [LayerInfo(VAE_SPEC, self.vae_out_shape(size)), *unet_infos, *control]

    def _run_models(
        self, sample, embeddings, image_size, names, original_size, target_size, full_output,
        control,
    ) -> tuple[Features, Tensor | None]:  # fmt: skip
        original_size, target_size = self._size_conditioning(original_size, target_size)
        batch = sample.shape[0]
        self._check_embeddings(embeddings)
        embeddings = embeddings.expand(batch).to(self.device, self.dtype)
        kwargs = {}
        if self._text_time:
            if embeddings.pooled is None:
                raise ValueError("embeddings: SDXL-style U-Nets need pooled embeddings")
            original = original_size or tuple(image_size)
            target = target_size or tuple(image_size)
            time_ids = torch.tensor([[*original, 0, 0, *target]], dtype=self.dtype)
            kwargs["added_cond_kwargs"] = {
                "text_embeds": embeddings.pooled,
                "time_ids": time_ids.to(self.device).expand(batch, -1),
            }
        timestep = torch.tensor(self.plan.timestep, device=self.device)
        control_names = [n for n in names if n.startswith(CONTROL_PREFIX)]
        unet_names = [n for n in names if not n.startswith(CONTROL_PREFIX)]
        needs_unet = bool(unet_names) or full_output
        recorded: dict[str, Tensor] = {}
        heads: dict[str, int] = {}

        def recorder(model, wanted, catalogue, early_exit):
            return ActivationRecorder(
                model,
                wanted,
                catalogue,
                early_exit=self.config.early_exit and early_exit,
                square_tokens=self.config.faithful,
                plain_attention=self.config.faithful,
                output_device=self.config.output_device,
                detach=not self.config.requires_grad,
            )

        if self.controlnet is not None:

            def run_control():
                return self.controlnet(
                    sample.to(self.dtype),
                    timestep,
                    encoder_hidden_states=embeddings.embeds,
                    controlnet_cond=control.to(self.device, self.dtype),
                    conditioning_scale=self.control_scale,
                    return_dict=False,
                    **kwargs,
                )

            residuals = None
            if control_names:
                with recorder(
                    self.controlnet, control_names, self.control_catalogue, not needs_unet
                ) as control_recorder:
                    residuals = run_control()
                recorded.update(control_recorder.features)
                heads.update(control_recorder.attention_heads())
            elif needs_unet:
                residuals = run_control()
            if needs_unet:
                kwargs["down_block_additional_residuals"] = list(residuals[0])
                kwargs["mid_block_additional_residual"] = residuals[1]

        def run():
            return self.unet(
                sample.to(self.dtype),
                timestep,
                encoder_hidden_states=embeddings.embeds,
                return_dict=False,
                **kwargs,
            )[0]

        output = None
        if unet_names:
            with recorder(self.unet, unet_names, self.catalogue, not full_output) as unet_recorder:
                output = run()
            recorded.update(unet_recorder.features)
            heads.update(unet_recorder.attention_heads())
        elif full_output:
            output = run()
        return Features({name: recorded[name] for name in names}, heads), output

    def _text_width(self) -> tuple[int, str]:
        return self.unet.config.cross_attention_dim, "the U-Net's cross_attention_dim"
