"""ComfyUI's SDXL MODEL as the UNet of a Pixelsmith pipeline, and ComfyUI's CONDITIONING as its
prompt embeddings: what lets Pixelsmith's stages run on the weights of ComfyUI's checkpoint and
LoRA nodes.

Pixelsmith calls its UNet once per batch of patches, each patch with its own SDXL
micro-conditioning (crop position and size in ``time_ids``). ComfyUI's samplers build SDXL's ADM
vector once per conditioning; :class:`ComfyUNet` rebuilds it per patch from the pooled text
embedding and the patch's ``time_ids`` (the same 256-wide Fourier features ComfyUI's SDXL model
uses) and calls ComfyUI's diffusion model with diffusers' call signature. Weight patches (LoRA)
apply as ComfyUI loads the model; patches that hook into ComfyUI's samplers do not, so a MODEL
carrying them is refused.
"""

from __future__ import annotations

from types import SimpleNamespace

import comfy.model_management
import comfy.model_sampling
import torch
from torch import Tensor

from common_kernels.runtime.errors import InvalidArgument
from pixelsmith.pipelines.stage import ddim_from_config
from pixelsmith.tiny import SDXL_SCHEDULER_CONFIG


def check_model(model: object) -> None:
    """An SDXL MODEL with SDXL's noise schedule, predicting noise, without sampler hooks."""
    base = getattr(model, "model", None)
    if type(base).__name__ != "SDXL" or not hasattr(base, "embedder"):
        kind = type(base).__name__ if base is not None else type(model).__name__
        raise InvalidArgument("model", f"must be an SDXL model (ComfyUI's SDXL class), got {kind}")
    sampling = model.get_model_object("model_sampling")
    prediction = prediction_type(sampling)
    if prediction != "EPS":
        raise InvalidArgument("model", "must predict noise (eps), as Pixelsmith's DDIM step "
                              f"does; got {prediction}")  # fmt: skip
    expected = ddim_from_config(dict(SDXL_SCHEDULER_CONFIG)).alphas_cumprod
    sigmas = sampling.sigmas.detach().cpu().double()
    if sigmas.shape != expected.shape or not torch.allclose(
        1 / (1 + sigmas**2), expected.double(), rtol=1e-4, atol=1e-6
    ):
        raise InvalidArgument(
            "model", "must have SDXL's noise schedule (scaled linear betas 0.00085-0.012 over "
            "1000 steps, no zero-terminal-SNR rescale)",
        )  # fmt: skip
    hooks = sampler_hooks(model)
    if hooks:
        raise InvalidArgument("model", "carries patches that hook into ComfyUI's samplers "
                              f"({', '.join(hooks)}), which Pixelsmith's sampler does not run; "
                              "weight patches such as LoRA apply")  # fmt: skip


def prediction_type(sampling: object) -> str:
    """What ComfyUI's model sampling object says the model predicts: ``EPS``,
    ``V_PREDICTION``, ``EDM``, ... (its class from ``comfy.model_sampling``)."""
    for kind in type(sampling).__mro__:
        if kind.__module__ == "comfy.model_sampling" and not kind.__name__.startswith("Model"):
            return kind.__name__
    return type(sampling).__name__


def sampler_hooks(model: object) -> list[str]:
    """The names of the model options that only ComfyUI's samplers apply."""
    options = model.model_options
    hooks = [name for name, value in options.items() if name != "transformer_options" and value]
    transformer = options.get("transformer_options", {})
    hooks += [f"transformer_options.{name}" for name, value in transformer.items() if value]
    return sorted(hooks)


class ComfyUNet(torch.nn.Module):
    """ComfyUI's SDXL MODEL called as diffusers' ``UNet2DConditionModel``
    (``unet(sample, t, encoder_hidden_states=..., added_cond_kwargs={"text_embeds",
    "time_ids"})``), returning its noise prediction.

    Args:
        model: ComfyUI's MODEL (a ``ModelPatcher`` of an SDXL model); checked by
            :func:`check_model`.
    """

    def __init__(self, model: object) -> None:
        super().__init__()
        check_model(model)
        base = model.model
        self.patcher = model
        self.net = base.diffusion_model
        self.embedder = base.embedder
        self.compute_dtype = base.manual_cast_dtype or base.get_dtype()
        unet = base.model_config.unet_config
        # what a diffusers pipeline reads from its UNet's config
        self.config = SimpleNamespace(
            block_out_channels=[unet["model_channels"] * m for m in unet["channel_mult"]],
            in_channels=unet["in_channels"],
            sample_size=128,
        )

    @property
    def device(self) -> torch.device:
        return self.patcher.load_device

    @property
    def dtype(self) -> torch.dtype:
        return self.compute_dtype

    def load(self, patch_shape: tuple[int, ...]) -> None:
        """Have ComfyUI load the model (weight patches applied) with room for ``patch_shape``
        batches."""
        memory = self.patcher.memory_required(list(patch_shape))
        comfy.model_management.load_models_gpu([self.patcher], memory_required=memory)

    def adm(self, pooled: Tensor, time_ids: Tensor) -> Tensor:
        """SDXL's ADM vector: pooled text embedding, then 256 Fourier features per
        micro-conditioning number (ComfyUI's ``SDXL.encode_adm``, per patch)."""
        count = time_ids.shape[0]
        features = self.embedder(time_ids.flatten().float())  # (6k, 256)
        return torch.cat([pooled.float(), features.reshape(count, -1)], dim=1)  # (k, P + 6*256)

    def forward(
        self,
        sample: Tensor,
        timestep: Tensor,
        encoder_hidden_states: Tensor,
        added_cond_kwargs: dict[str, Tensor],
        return_dict: bool = False,
    ) -> tuple[Tensor]:
        count, dtype = sample.shape[0], self.compute_dtype
        y = self.adm(added_cond_kwargs["text_embeds"], added_cond_kwargs["time_ids"])
        t = torch.as_tensor(timestep, device=sample.device).float().expand(count)  # (k,)
        out = self.net(sample.to(dtype), t, context=encoder_hidden_states.to(dtype),
                       y=y.to(dtype), transformer_options={})  # fmt: skip
        return (out.float(),)


def embeddings(conditioning: object, argument: str) -> tuple[Tensor, Tensor]:
    """One ComfyUI CONDITIONING (from CLIP Text Encode on an SDXL CLIP) -> its (1, L, D) text
    embeddings and (1, P) pooled embedding."""
    if not isinstance(conditioning, list) or len(conditioning) != 1:
        count = len(conditioning) if isinstance(conditioning, list) else type(conditioning)
        raise InvalidArgument(argument, "must be one conditioning (no combined or area "
                              f"conditionings), got {count}")  # fmt: skip
    embeds, extra = conditioning[0]
    unsupported = sorted(set(extra) & {"control", "area", "mask", "gligen", "hooks"})
    if unsupported:
        raise InvalidArgument(
            argument, f"carries {', '.join(unsupported)}, which Pixelsmith's patches do not "
            "apply; give it to the base stage's sampler",
        )  # fmt: skip
    pooled = extra.get("pooled_output")
    if pooled is None:
        raise InvalidArgument(argument, "has no pooled_output: encode it with an SDXL CLIP")
    return embeds.float(), pooled.float()
