"""Joint text-image transformers (MMDiT): FLUX.1 (``FluxTransformer2DModel``) and SD3 / SD3.5
(``SD3Transformer2DModel``) as backbones.

Their blocks attend over the text and image tokens together; diffeat records the **image
tokens** only, as maps on the token grid of the actual input (non-square inputs work):

* ``{p}-in``: the noisy latent fed to the transformer as (B, C, h, w) (FLUX: its 2x2-packed
  tokens unpacked to the latent grid); ``{p}-after-embed``: the image tokens after the input
  embedding (FLUX ``x_embedder``; SD3 ``pos_embed``: patches plus positional embedding);
* per block: ``q``/``k``/``v`` (the image part of the joint attention's projections right after
  ``to_q``/``to_k``/``to_v``, before qk-norm and rotary embedding), ``self-map`` (image queries
  -> image keys, ``heads * L_img`` channels) and ``cross-map`` (image queries -> text keys,
  ``heads * L_txt``), both of the softmax over all keys; SD3.5's dual-attention blocks also
  ``attn2-{q,k,v,map}`` (their second, image-only attention); ``ffn-inner`` (the tanh-GELU
  output of the image feed-forward, 4C wide; FLUX single-stream blocks: ``act_mlp``, the image
  part); ``out`` (the block's image output);
* ``{p}-out``: the transformer output (the velocity) as (B, C, h, w) on the latent grid.

FLUX names blocks ``flux-double{k}-...`` (``transformer_blocks.k``) and ``flux-single{k}-...``
(``single_transformer_blocks.k``); SD3 ``sd3-block{k}-...``. FLUX.1-dev: ``3 + 7 * 57 = 402``
names; SD3.5-Medium: ``3 + 7 * 24 + 4 * 13 = 223``.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from common_kernels.runtime.errors import InvalidValue
from diffeat.backbones.base import TransformerBackbone
from diffeat.capture import HookRecorder, _check_unchunked, probs_to_map, tokens_to_map
from diffeat.catalogue import LayerInfo, LayerSpec, require_attributes
from diffeat.shapes import check_pass_size

FLUX_TOKENS = 512  # FLUX.1-dev's T5 max_sequence_length (schnell: 256)
SD3_CLIP_TOKENS = 77  # SD3's CLIP tokens, before the T5 ones
SD3_T5_TOKENS = 256  # SD3's default T5 max_sequence_length
JOINT_KINDS = ("q", "k", "v", "self-map", "cross-map")
DUAL_KINDS = ("attn2-q", "attn2-k", "attn2-v", "attn2-map")
MAP_KINDS = ("self-map", "cross-map", "attn2-map")


# -- FLUX's 2x2 packing -----------------------------------------------------------------------
def pack_latents(latents: Tensor) -> Tensor:
    """Latents (B, C, h, w) -> FLUX tokens (B, h/2 * w/2, 4C), each 2x2 patch one token in
    raster order (as diffusers' ``FluxPipeline`` packs them)."""
    batch, channels, height, width = latents.shape
    patches = latents.reshape(batch, channels, height // 2, 2, width // 2, 2)  # (B,C,h/2,2,w/2,2)
    patches = patches.permute(0, 2, 4, 1, 3, 5)  # (B, h/2, w/2, C, 2, 2)
    return patches.reshape(batch, (height // 2) * (width // 2), channels * 4)  # (B, L, 4C)


def unpack_latents(tokens: Tensor, height: int, width: int) -> Tensor:
    """FLUX tokens (B, h/2 * w/2, 4C) -> latents (B, C, h, w); the inverse of
    :func:`pack_latents`.

    Args:
        tokens: packed tokens.
        height: the latent height ``h`` (even).
        width: the latent width ``w`` (even).
    """
    batch, length, packed = tokens.shape
    if length != (height // 2) * (width // 2) or packed % 4:
        raise ValueError(f"{length} tokens of {packed} do not pack a {height}x{width} latent")
    patches = tokens.reshape(batch, height // 2, width // 2, packed // 4, 2, 2)  # (B,h/2,w/2,C,2,2)
    patches = patches.permute(0, 3, 1, 4, 2, 5)  # (B, C, h/2, 2, w/2, 2)
    return patches.reshape(batch, packed // 4, height, width)  # (B, C, h, w)


def flux_image_ids(height: int, width: int, device=None) -> Tensor:
    """FLUX's image position ids (h * w, 3): ``(0, row, column)`` of each token of an
    ``height x width`` token grid, in raster order."""
    rows = torch.arange(height, device=device).repeat_interleave(width)  # (h*w,)
    cols = torch.arange(width, device=device).repeat(height)  # (h*w,)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=1).float()  # (h*w, 3)


# -- attention probabilities ------------------------------------------------------------------
def _heads(x: Tensor, head_dim: int) -> Tensor:
    return x.unflatten(-1, (-1, head_dim))  # (B, L, heads, d)


def _norm(attn: nn.Module, name: str, x: Tensor) -> Tensor:
    """The layer's qk-norm ``name`` applied per head (SD3-Medium has none)."""
    norm = getattr(attn, name, None)
    return x if norm is None else norm(x)


def joint_probs(attn: nn.Module, hidden: Tensor, context: Tensor | None, rope, text_first: bool):
    """The softmax attention probabilities (B, heads, L, L) of a joint attention layer over all
    its tokens, computed from the layer's own weights the way its processor attends (qk-norm,
    then FLUX's rotary embedding); projections are called without their hooks.

    Args:
        attn: a ``FluxAttention`` or an SD3 ``Attention``.
        hidden: its ``hidden_states`` (B, L_img or L_txt + L_img, C).
        context: its ``encoder_hidden_states`` (B, L_txt, C) or None.
        rope: FLUX's ``image_rotary_emb`` (cos, sin) or None.
        text_first: the tokens are ordered (text, image) (FLUX) rather than (image, text) (SD3).
    """
    head_dim = attn.to_q.out_features // attn.heads
    query = _norm(attn, "norm_q", _heads(attn.to_q.forward(hidden), head_dim))  # (B, L, heads, d)
    key = _norm(attn, "norm_k", _heads(attn.to_k.forward(hidden), head_dim))
    if context is not None and getattr(attn, "add_q_proj", None) is not None:
        text_q = _norm(attn, "norm_added_q", _heads(attn.add_q_proj.forward(context), head_dim))
        text_k = _norm(attn, "norm_added_k", _heads(attn.add_k_proj.forward(context), head_dim))
        pairs = ((text_q, query), (text_k, key)) if text_first else ((query, text_q), (key, text_k))
        query, key = (torch.cat(pair, dim=1) for pair in pairs)
    if rope is not None:
        from diffusers.models.embeddings import apply_rotary_emb

        query = apply_rotary_emb(query, rope, sequence_dim=1)
        key = apply_rotary_emb(key, rope, sequence_dim=1)
    query, key = query.transpose(1, 2).float(), key.transpose(1, 2).float()  # (B, heads, L, d)
    scores = query @ key.transpose(-1, -2) * head_dim**-0.5  # (B, heads, L, L)
    return scores.softmax(dim=-1).to(hidden.dtype)


# -- the official code's FLUX names -----------------------------------------------------------
# The official code names FLUX's blocks ``vit-block{i}`` with the single-stream blocks numbered
# after the double-stream ones (i = 19 + j on FLUX.1) and records, per block, the image part of
# the joint attention's q/k/v and its two maps, double blocks' FFN inner activation
# (``-ffn-inner``) and single blocks' output. Its double-block ``-out`` (and ``-norm-out``)
# hold the normalised FFN input, not the block output, and ``-attn-out`` the attention output;
# diffeat records none of those three.
OFFICIAL_KINDS = ("q", "k", "v", "self-map", "cross-map")


def official_flux_name(name: str, double_blocks: int = 19, single_blocks: int = 38) -> str:
    """The official code's name of a diffeat FLUX activation (``flux-single2-q`` ->
    ``vit-block21-q`` on FLUX.1's 19 double blocks).

    Args:
        name: a diffeat FLUX name.
        double_blocks: the transformer's double-stream blocks (``num_layers``, 19).
        single_blocks: its single-stream blocks (``num_single_layers``, 38).

    Raises:
        ValueError: a name the official code does not record (or no block of FLUX.1 has),
            saying why.
    """
    parts = name.split("-", 2)
    if len(parts) == 3 and parts[0] == "flux" and parts[1][:6] in ("double", "single"):
        stage, index, kind = parts[1][:6], parts[1][6:], parts[2]
        count = double_blocks if stage == "double" else single_blocks
        if index.isdigit() and int(index) < count:
            block = int(index) + (double_blocks if stage == "single" else 0)
            if kind in OFFICIAL_KINDS or (stage, kind) in (("double", "ffn-inner"),
                                                          ("single", "out")):  # fmt: skip
                return f"vit-block{block}-{kind}"
    raise ValueError(
        f"name: {name!r} has no official FLUX name (the official code records q/k/v and the "
        "maps of every block, double blocks' ffn-inner and single blocks' out; its double-block "
        "'out' is the normalised FFN input)"
    )


def flux_name_of_official(official: str, double_blocks: int = 19, single_blocks: int = 38) -> str:
    """The diffeat name of an official FLUX activation name (``vit-block21-q`` ->
    ``flux-single2-q``); the inverse of :func:`official_flux_name`.

    Raises:
        ValueError: an official name diffeat does not record (``-norm-out``, ``-attn-out``, a
            double block's ``-out``: the normalised FFN input), saying why.
    """
    head, _, kind = official.partition("-block")[2].partition("-")
    if official.startswith("vit-block") and head.isdigit():
        block = int(head)
        stage, index = ("double", block) if block < double_blocks else (
            "single", block - double_blocks)  # fmt: skip
        name = f"flux-{stage}{index}-{kind}"
        try:
            if official_flux_name(name, double_blocks, single_blocks) == official:
                return name
        except ValueError:
            pass
    raise ValueError(
        f"official: {official!r} has no diffeat FLUX name (diffeat records no '-norm-out' or "
        "'-attn-out', and an official double block's '-out' is its normalised FFN input, not "
        "its output)"
    )


# -- the catalogue ----------------------------------------------------------------------------
def _block_specs(prefix: str, path: str, stage: str, k: int, dual: bool) -> list[LayerSpec]:
    ffn = f"{path}.act_mlp" if stage == "single" else f"{path}.ff.net.0"
    parts = [(kind, f"{path}.attn.to_{kind}") for kind in ("q", "k", "v")]
    parts += [(kind, f"{path}.attn") for kind in ("self-map", "cross-map")]
    if dual:
        parts += [(kind, f"{path}.attn2.to_{kind[-1]}") for kind in DUAL_KINDS[:3]]
        parts.append(("attn2-map", f"{path}.attn2"))
    parts += [("ffn-inner", ffn), ("block-out", path)]
    specs = []
    for kind, module in parts:
        suffix = "out" if kind == "block-out" else kind
        specs.append(LayerSpec(f"{prefix}{k}-{suffix}", kind, module, stage, block=k))
    return specs


def build_flux_catalogue(transformer: nn.Module) -> list[LayerSpec]:
    """Every activation of a ``FluxTransformer2DModel``, in execution order (FLUX.1: 402).

    Args:
        transformer: the transformer (real, random or on the ``meta`` device).
    """
    reads = "FluxTransformer2DModel transformers (FLUX.1)"
    attrs = ("x_embedder", "transformer_blocks", "single_transformer_blocks", "proj_out")
    require_attributes(transformer, attrs, "transformer", reads)
    specs = [
        LayerSpec("flux-in", "in", "", "flux"),
        LayerSpec("flux-after-embed", "embed", "x_embedder", "flux"),
    ]
    for k in range(len(transformer.transformer_blocks)):
        specs += _block_specs("flux-double", f"transformer_blocks.{k}", "double", k, False)
    for k in range(len(transformer.single_transformer_blocks)):
        specs += _block_specs("flux-single", f"single_transformer_blocks.{k}", "single", k, False)
    specs.append(LayerSpec("flux-out", "out", "", "flux"))
    return specs


def build_sd3_catalogue(transformer: nn.Module) -> list[LayerSpec]:
    """Every activation of an ``SD3Transformer2DModel``, in execution order (SD3.5-Medium: 223).

    Args:
        transformer: the transformer (real, random or on the ``meta`` device).
    """
    reads = "SD3Transformer2DModel transformers (SD3, SD3.5)"
    require_attributes(transformer, ("pos_embed", "transformer_blocks", "proj_out"), "transformer",
                       reads)  # fmt: skip
    specs = [
        LayerSpec("sd3-in", "in", "", "sd3"),
        LayerSpec("sd3-after-embed", "embed", "pos_embed", "sd3"),
    ]
    for k, block in enumerate(transformer.transformer_blocks):
        dual = getattr(block, "attn2", None) is not None
        specs += _block_specs("sd3-block", f"transformer_blocks.{k}", "joint", k, dual)
    specs.append(LayerSpec("sd3-out", "out", "", "sd3"))
    return specs


# -- recording --------------------------------------------------------------------------------
class JointRecorder(HookRecorder):
    """Records MMDiT activations (image tokens only) with forward hooks; nothing is swapped:
    attention maps are computed beside the layer's own processor from its inputs
    (:func:`joint_probs`), so recording never changes the pass.

    Args:
        transformer: a ``FluxTransformer2DModel`` or ``SD3Transformer2DModel``.
        names: activation names (checked against ``catalogue``).
        catalogue: the transformer's catalogue.
        grid: (h, w) of the image-token grid of this pass (the latent grid / 2).
        early_exit: stop the pass once the last requested activation is recorded.
        output_device: move recorded tensors there.
        detach: store tensors detached from the autograd graph.
    """

    map_kinds = MAP_KINDS

    def __init__(self, transformer: nn.Module, names, catalogue, grid: tuple[int, int], *,
                 early_exit: bool = True, output_device=None, detach: bool = True):  # fmt: skip
        super().__init__(transformer, names, catalogue, early_exit=early_exit,
                         output_device=output_device, detach=detach)  # fmt: skip
        self._patch = 0
        self.image_grid = tuple(grid)
        self.flux = hasattr(transformer, "single_transformer_blocks")
        self._text = 0  # text tokens of this pass (set by the transformer's pre-hook)

    def _image(self, tokens: Tensor, spec: LayerSpec) -> Tensor:
        """The image tokens of a (B, L, C) sequence: FLUX single-stream blocks see (text, image)."""
        return tokens[:, self._text :] if spec.stage == "single" else tokens

    def _latent(self, value: Tensor) -> Tensor:
        """The transformer's input or output as (B, C, h, w) on the latent grid."""
        if not self.flux:
            return value.clone()
        height, width = self.image_grid
        return unpack_latents(value, 2 * height, 2 * width)  # (B, C, 2h, 2w)

    def _tokens(self, spec: LayerSpec):
        def hook(module, args, output):
            # every block returns (text, image); projections and activations hold both in
            # FLUX's single-stream blocks
            tokens = output[1] if spec.kind == "block-out" else self._image(output, spec)
            self.record(spec.name, tokens_to_map(tokens, *self.image_grid))

        return hook

    def _map(self, spec: LayerSpec):
        def hook(module, args, kwargs):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
            rope = kwargs.get("image_rotary_emb")
            probs = joint_probs(module, hidden, context, rope, self.flux)  # (B, heads, L, L)
            text, image = self._text, self.image_grid[0] * self.image_grid[1]
            rows = slice(text, None) if self.flux else slice(0, image)
            if spec.kind == "attn2-map":  # image tokens only
                keys = slice(None)
            elif spec.kind == "self-map":
                keys = rows
            else:
                keys = slice(0, text) if self.flux else slice(image, None)
            maps = probs[:, :, rows, keys]  # (B, heads, L_img, keys)
            self.record(spec.name, probs_to_map(maps, *self.image_grid))

        return hook

    def _pre(self, module, args, kwargs):
        context = kwargs.get("encoder_hidden_states")
        self._text = 0 if context is None else context.shape[1]
        for spec in self.specs:
            if spec.kind == "in":
                hidden = kwargs.get("hidden_states", args[0] if args else None)
                self.record(spec.name, self._latent(hidden))

    def _out(self, spec: LayerSpec):
        def hook(module, args, output):
            value = output[0] if isinstance(output, tuple) else output.sample
            self.record(spec.name, self._latent(value))

        return hook

    def _check_tokens(self, spec: LayerSpec) -> None:
        if spec.kind == "ffn-inner" and spec.stage != "single":
            _check_unchunked(self._module(spec.module.rsplit(".ff.", 1)[0]), spec.name)
        if spec.kind in JOINT_KINDS or spec.kind in DUAL_KINDS:
            attn = self._module(spec.module.rsplit(".", 1)[0])
            if getattr(attn, "fused_projections", False):
                raise ValueError(f"{spec.module}: fused q/k/v projections; unfuse them")
            self._heads[spec.name] = attn.heads

    def _install(self) -> None:
        self._grid = self.image_grid
        super()._install()


# -- the backbones ----------------------------------------------------------------------------
class JointBackbone(TransformerBackbone):
    """What FLUX and SD3 share: a ``transformer/`` folder, flow-matching noise (``sigma``),
    CLIP and T5 text, no LoRA/ControlNet here."""

    flow: ClassVar[bool] = True
    prefix: ClassVar[str]

    def native_size(self, config: Mapping[str, Any], vae_scale: int) -> tuple[int, int]:
        side = config.get("sample_size", 128) * vae_scale
        return side, side

    def catalogue(self, network: nn.Module) -> list[LayerSpec]:
        return self.build(network)

    @abc.abstractmethod
    def build(self, network: nn.Module) -> list[LayerSpec]:
        """The catalogue of ``network`` (each joint family names its own blocks)."""

    @abc.abstractmethod
    def latent_channels(self, config: Mapping[str, Any]) -> tuple[int, int]:
        """Channels of the transformer's input and output on the latent grid."""

    def layer_infos(
        self, config: Mapping[str, Any], size: tuple[int, int], text_tokens: int, vae_scale: int
    ) -> list[LayerInfo]:
        """The catalogue (of the model built on ``meta``) with feature shapes for ``size``
        images, from the config: every image-token feature lies on the token grid, and its
        width is the block's (``heads * head_dim``), 4x that (``ffn-inner``) or ``heads`` x the
        keys (maps). ``tests/test_mmdit.py`` checks them against a recorded pass.

        Args:
            config: the transformer's config.
            size: (H, W) in px, multiples of :meth:`size_multiple`.
            text_tokens: text tokens of the joint attention.
            vae_scale: pixels per latent cell.
        """
        config = dict(config)
        height, width = size
        multiple = self.size_multiple(config, vae_scale)
        if height % multiple or width % multiple:
            raise InvalidValue(
                "image_size", f"{{image_size}} {height}x{width} is not a multiple of {multiple}"
            )
        latent = (height // vae_scale, width // vae_scale)
        self.check_size(config, *latent)
        check_pass_size({**config, "patch_size": self.downsampling(config)}, height, width,
                        vae_scale)  # fmt: skip
        with torch.device("meta"):
            model = self.loader().from_config(config).eval()
        down = self.downsampling(config)
        grid = (latent[0] // down, latent[1] // down)
        heads = int(config["num_attention_heads"])
        inner = heads * int(config["attention_head_dim"])
        tokens = grid[0] * grid[1]
        in_channels, out_channels = self.latent_channels(config)
        widths = {"in": in_channels, "out": out_channels, "ffn-inner": 4 * inner,
                  "self-map": heads * tokens, "attn2-map": heads * tokens,
                  "cross-map": heads * text_tokens}  # fmt: skip
        infos = []
        for spec in self.build(model):
            on_latent = spec.kind in ("in", "out")
            attention = spec.kind in JOINT_KINDS or spec.kind in DUAL_KINDS
            shape = (widths.get(spec.kind, inner), *(latent if on_latent else grid))
            infos.append(LayerInfo(spec, shape, heads if attention else None))
        return infos

    def check_size(self, config: Mapping[str, Any], height: int, width: int) -> None:
        """Refuse latents the transformer cannot take (SD3: its positional embedding's size)."""

    def check_weights(self, folder: Path, config: Mapping[str, Any]) -> None:
        """Refuse a local ``transformer/`` whose safetensors weights do not fit the class its
        config builds (missing, unexpected or differently shaped tensors), reading the files'
        headers only.

        Args:
            folder: the model folder.
            config: its ``transformer/config.json``.

        Raises:
            ValueError: naming the first misfit and how many there are.
        """
        from safetensors import safe_open

        files = sorted((folder / self.subfolder).glob("*.safetensors"))
        if not files:
            return  # other formats (.bin) are checked by diffusers when they load
        with torch.device("meta"):
            wanted = {k: tuple(v.shape) for k, v in self.loader().from_config(dict(config))
                      .state_dict().items()}  # fmt: skip
        found: dict[str, tuple[int, ...]] = {}
        for file in files:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (safe_open is no dict)
                    found[key] = tuple(handle.get_slice(key).get_shape())
        problems = [f"{k!r} is {found[k]}, the config's model needs {v}"
                    for k, v in wanted.items() if k in found and found[k] != v]  # fmt: skip
        problems += [f"{k!r} is missing" for k in wanted if k not in found]
        problems += [f"{k!r} is not in the model" for k in found if k not in wanted]
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ValueError(
                f"{self.subfolder}/: its weights do not fit the {self.class_names[0]} its "
                f"config.json builds: {problems[0]}{more}"
            )


class FluxBackbone(JointBackbone):
    """diffusers ``FluxTransformer2DModel`` transformers (FLUX.1-dev, FLUX.1-schnell)."""

    name = "flux"
    title = "FLUX"
    prefix = "flux-"
    class_names = ("FluxTransformer2DModel",)
    text_encoders = ("CLIPTextModel", "T5EncoderModel")
    text_tokens = FLUX_TOKENS

    def native_size(self, config: Mapping[str, Any], vae_scale: int) -> tuple[int, int]:
        return 1024, 1024  # FLUX.1's usual resolution (its config names none)

    def downsampling(self, config: Mapping[str, Any]) -> int:
        """2: each token packs a 2x2 latent patch."""
        return 2 * int(config.get("patch_size", 1))

    def factors(self, config: Mapping[str, Any], vae_scale: int) -> str:
        return f"VAE x{vae_scale}, 2x2 packing"

    def build(self, network: nn.Module) -> list[LayerSpec]:
        return build_flux_catalogue(network)

    def latent_channels(self, config: Mapping[str, Any]) -> tuple[int, int]:
        """The packed token widths / 4 (each token holds a 2x2 patch)."""
        patch = int(config.get("patch_size", 1)) ** 2
        out = config.get("out_channels") or config["in_channels"]
        return config["in_channels"] // (4 * patch), out // (4 * patch)


class SD3Backbone(JointBackbone):
    """diffusers ``SD3Transformer2DModel`` transformers (SD3-Medium, SD3.5 Medium/Large)."""

    name = "sd3"
    title = "SD3"
    prefix = "sd3-"
    class_names = ("SD3Transformer2DModel",)
    # two CLIPs with projections, then T5 (``_3``)
    text_encoders = ("CLIPTextModelWithProjection",) * 2 + ("T5EncoderModel",)
    text_tokens = SD3_CLIP_TOKENS + SD3_T5_TOKENS

    def prompt_tokens(self, max_sequence_length: int | None) -> int:
        """77 CLIP tokens, then the T5 ones (``max_sequence_length``, default 256)."""
        return SD3_CLIP_TOKENS + (max_sequence_length or SD3_T5_TOKENS)

    def check_size(self, config: Mapping[str, Any], height: int, width: int) -> None:
        most = config.get("pos_embed_max_size")
        patch = self.downsampling(config)
        if most is not None and max(height, width) > most * patch:
            side = most * patch * 8
            raise InvalidValue(
                "image_size",
                f"{{image_size}} {height * 8}x{width * 8}: this SD3 transformer's positional "
                f"embedding covers at most {side} px a side (pos_embed_max_size {most})",
            )

    def build(self, network: nn.Module) -> list[LayerSpec]:
        return build_sd3_catalogue(network)

    def latent_channels(self, config: Mapping[str, Any]) -> tuple[int, int]:
        return config["in_channels"], config.get("out_channels") or config["in_channels"]


FLUX = FluxBackbone()
SD3 = SD3Backbone()
