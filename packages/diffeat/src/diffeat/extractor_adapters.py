"""The LoRA and ControlNet methods of :class:`~diffeat.FeatureExtractor` (a mixin, as
diffusers' loader mixins): LoRA weights read and checked against the model before diffusers'
loaders load them, a ControlNet checked against the U-Net before it is used."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from diffeat.adapters import (
    check_controlnet_config,
    check_lora_state_dict,
    lora_components,
    lora_loader,
    lora_source,
    read_lora,
)
from diffeat.catalogue import build_catalogue, build_control_catalogue, check_names
from diffeat.loading import load_controlnet
from diffeat.presets import ALL


class AdapterMixin:
    """``load_lora`` and ``set_controlnet`` of :class:`~diffeat.FeatureExtractor` (which owns
    the ``unet``, ``text_encoders``, ``loras``, ``controlnet``, ``config`` they change)."""

    def load_lora(
        self,
        source,
        scale: float = 1.0,
        fuse: bool = False,
        adapter_name: str | None = None,
        **load,
    ) -> str:
        """Load LoRA weights into the U-Net (and text encoders) with diffusers' loaders.

        The weights are read by diffusers' ``lora_state_dict`` (diffusers, PEFT and the usual
        Kohya/A1111 formats), checked against this model (:func:`diffeat.adapters.
        check_lora_state_dict`: one ``ValueError`` naming the first key that fits no module,
        before anything is loaded), then loaded by diffusers' ``load_lora_weights`` (PEFT).
        Several LoRAs can be loaded; unfused ones are active together, each at its scale.

        Args:
            source: a ``.safetensors`` file, a folder or hub id holding one, or a state dict.
            scale: the LoRA's weight (``set_adapters`` weight, or ``lora_scale`` when fused).
            fuse: merge the LoRA into the weights (``fuse_lora``) and remove its PEFT layers
                (the model is plain again; only allowed while no unfused LoRA is loaded).
            adapter_name: default ``lora{i}``.
            **load: ``weight_name``, ``subfolder`` and hub options for ``lora_state_dict``.

        Returns:
            The adapter name.
        """
        if isinstance(scale, bool) or not isinstance(scale, int | float):
            raise ValueError(f"lora_scale: must be a number; got {scale!r}")
        if fuse and self.loras:
            raise ValueError(
                f"fuse_lora: unfused LoRAs {sorted(self.loras)} are loaded; fuse LoRAs before "
                "loading unfused ones"
            )
        label = source if isinstance(source, str | Path) else "state dict"
        state_dict, _, _ = read_lora(source, **load)
        check_lora_state_dict(
            state_dict, lora_components(self.unet, self.text_encoders), str(label)
        )
        taken = set(self.loras) | set(self.fused_loras)
        name = adapter_name or next(
            f"lora{i}" for i in range(len(taken) + 1) if f"lora{i}" not in taken
        )
        if name in taken:
            raise ValueError(f"adapter_name: {name!r} is already loaded")
        loader = lora_loader(self.unet, self.text_encoders, self._text_time)
        # diffusers reads the source itself (network alphas and metadata included)
        source, load = lora_source(source, load)
        loader.load_lora_weights(source, adapter_name=name, **load)
        if fuse:
            parts = ["unet", *(["text_encoder", "text_encoder_2"][: len(self.text_encoders)])]
            loader.fuse_lora(components=parts, lora_scale=float(scale), adapter_names=[name])
            loader.unload_lora_weights()
            self.fused_loras.append(name)
        else:
            self.loras[name] = float(scale)
            loader.set_adapters(list(self.loras), list(self.loras.values()))
        self.catalogue = build_catalogue(self.unet)
        if self.prompt_encoder is not None:
            self.prompt_encoder.clear_cache()  # the text encoders may have changed
        return name

    def set_controlnet(self, controlnet, scale: float = 1.0, image=None) -> None:
        """Use a ControlNet in every U-Net pass (None removes it).

        Its residuals are added to the U-Net's skip connections and mid block in the extraction
        pass (``conditioning_scale = scale``); its own activations join the catalogue with the
        ``control-`` prefix (:func:`diffeat.catalogue.build_control_catalogue`). Calls then
        need ``control_image=`` unless ``image`` is given. A ControlNet whose config does not
        fit the U-Net raises here.

        Args:
            controlnet: a diffusers ``ControlNetModel``, a hub id or folder, or None.
            scale: ``conditioning_scale``.
            image: the conditioning image used by calls that pass none (``control_image``
                of :meth:`control_pixels`: PIL, list or tensor), e.g. for the probes.
        """
        if isinstance(scale, bool) or not isinstance(scale, int | float):
            raise ValueError(f"control_scale: must be a number; got {scale!r}")
        if isinstance(controlnet, str | Path):
            controlnet = load_controlnet(str(controlnet), self.dtype, self.unet.config)
        self.control_image = image
        if controlnet is None:
            self.controlnet, self.control_catalogue = None, []
            self._refresh_layers()
            return
        if not hasattr(controlnet, "config"):
            raise TypeError(
                f"controlnet: expected a ControlNetModel; got {type(controlnet).__name__}"
            )
        check_controlnet_config(controlnet.config, self.unet.config)
        self.control_catalogue = build_control_catalogue(controlnet)
        self.controlnet = controlnet.eval()
        self.control_scale = float(scale)
        self._refresh_layers()

    def _refresh_layers(self) -> None:
        """Re-expand a configured ``"all"`` after the catalogue changed; refuse configured
        names that no longer exist (ControlNet names after removing it)."""
        if not hasattr(self, "config"):
            return  # called from __init__, before the configuration
        if self._all_layers:
            self.config = replace(self.config, layers=self.expand_all((ALL,)))
        check_names(self.config.layers, self.activations)
