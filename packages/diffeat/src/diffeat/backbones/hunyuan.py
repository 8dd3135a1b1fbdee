"""HunyuanDiT (``HunyuanDiT2DModel``, Tencent-Hunyuan/HunyuanDiT-Diffusers) as a backbone.

The catalogue follows the PixArt DiT's naming (execution order):

* ``hunyuan-in`` (the noisy latent fed to the transformer), ``hunyuan-after-patch-embed`` (the
  patch embedding, as a (B, C, h/p, w/p) map; HunyuanDiT adds no positional embedding there,
  its attention layers rotate q and k instead);
* per block ``k`` (``blocks.k``, a ``HunyuanDiTBlock``): blocks of the second half
  (``k > num_layers // 2``) first merge a long skip connection from the first half into their
  input, ``hunyuan-block{k}-skip-out`` (the ``skip_linear`` output); then
  ``hunyuan-block{k}-{self-q|self-k|self-v|self-map|cross-q|cross-map|ffn-inner|out}`` (q/k/v
  right after ``to_q``/``to_k``/``to_v``, before the qk-norm and the rotary embedding; maps
  ``(B, heads * keys, h, w)``, the softmax of the qk-normed, rotated queries and keys;
  cross-attention keys are the 77 CLIP-BERT + 256 mT5 text tokens; ``ffn-inner`` the GELU
  output, ``mlp_ratio * C`` wide; ``out`` the block output);
* ``hunyuan-out``: the transformer output (noise and variance, ``2 * in_channels``) on the
  latent grid.

Token grids are the patch grid (H/8/p, W/8/p) of the actual input, so non-square inputs work.
A model folder holds ``transformer/``, ``vae/``, ``scheduler/``, ``text_encoder/`` (a BERT)
+ ``tokenizer/`` and ``text_encoder_2/`` (mT5) + ``tokenizer_2/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from diffeat.backbones.base import TransformerBackbone
from diffeat.capture import HookRecorder, _check_unchunked, probs_to_map, tokens_to_map
from diffeat.catalogue import LayerInfo, LayerSpec, block_specs, require_attributes
from diffeat.shapes import check_image_size, recorded_infos

HUNYUAN_TOKENS = 77 + 256  # text_len (CLIP-BERT) + text_len_t5 (mT5) of HunyuanDiT
ROPE_BASE_SIZE = 512  # px: the pipeline's rotary embedding covers a 512 px grid, then crops
PIPELINE_ORIGINAL_SIZE = (1024, 1024)  # HunyuanDiTPipeline's default original_size
MAP_KINDS = ("self-map", "cross-map")


def build_hunyuan_catalogue(transformer: nn.Module) -> list[LayerSpec]:
    """Every activation of a ``HunyuanDiT2DModel``, in execution order.

    Args:
        transformer: the transformer (real, random or on the ``meta`` device).

    Returns:
        The catalogue entries (HunyuanDiT v1.x, 40 blocks: ``3 + 8 * 40 + 19 = 342``).
    """
    from diffusers.models.transformers.hunyuan_transformer_2d import HunyuanDiTBlock

    reads = "HunyuanDiT2DModel transformers (HunyuanDiT)"
    require_attributes(transformer, ("pos_embed", "blocks", "proj_out"), "transformer", reads)
    specs = [
        LayerSpec("hunyuan-in", "in", "", "hunyuan"),
        LayerSpec("hunyuan-after-patch-embed", "patch-embed", "pos_embed", "hunyuan"),
    ]
    for k, block in enumerate(transformer.blocks):
        if not isinstance(block, HunyuanDiTBlock):
            raise ValueError(f"blocks.{k}: {type(block).__name__} is not a HunyuanDiTBlock")
        path = f"blocks.{k}"
        kinds = [("skip-out", "skip_linear")] if block.skip_linear is not None else []
        kinds += [(f"self-{p}", f"attn1.to_{p}") for p in "qkv"]
        kinds += [("self-map", "attn1"), ("cross-q", "attn2.to_q"), ("cross-map", "attn2")]
        kinds += [("ffn-inner", "ff.net.0"), ("block-out", "")]
        specs += block_specs("hunyuan", k, path, kinds)
    specs.append(LayerSpec("hunyuan-out", "out", "", "hunyuan"))
    return specs


def _crop_region(grid: tuple[int, int], base: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Where a ``grid`` of patches lies in the ``base x base`` grid of the rotary embedding:
    resized to fit its longer side, centred (top-left and bottom-right corners)."""
    height, width = grid
    if height > width:
        size = (base, round(base / height * width))
    else:
        size = (round(base / width * height), base)
    top, left = (round((base - side) / 2.0) for side in size)
    return (top, left), (top + size[0], left + size[1])


def hunyuan_rotary_emb(
    transformer_or_config: nn.Module | Mapping[str, Any], grid: tuple[int, int], device=None
) -> tuple[Tensor, Tensor]:
    """The rotary embedding (cos, sin) of a ``grid`` of patches, as ``HunyuanDiTPipeline``
    builds it: positions of the grid resized into the 512 px grid (aspect kept, centred).

    Args:
        transformer_or_config: a ``HunyuanDiT2DModel`` or its config.
        grid: (h, w) of the patch grid (H/8/p, W/8/p).
        device: where the tables are made.
    """
    from diffusers.models.embeddings import get_2d_rotary_pos_embed

    config = getattr(transformer_or_config, "config", transformer_or_config)
    crops = _crop_region(tuple(grid), ROPE_BASE_SIZE // 8 // int(config["patch_size"]))
    head_dim = int(config["attention_head_dim"])
    return get_2d_rotary_pos_embed(head_dim, crops, tuple(grid), device=device, output_type="pt")


def hunyuan_conditioning(
    transformer: nn.Module,
    batch: int,
    size: tuple[int, int],
    device,
    dtype: torch.dtype,
    original_size: tuple[int, int] | None = None,
    target_size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The extra inputs of ``HunyuanDiT2DModel.forward`` as ``HunyuanDiTPipeline`` builds them:
    ``image_meta_size`` = original size (default 1024 x 1024, the pipeline's) + target size
    (default the image size) + crop top-left (0, 0), ``style`` 0 and ``image_rotary_emb``.

    Args:
        transformer: the transformer (its config: patch size, heads).
        batch: the batch size.
        size: (H, W) px of the images.
        device: where the tensors go.
        dtype: the meta size's dtype (the pipeline's: the prompt embeddings').
        original_size: (H, W) of the ``original_size`` conditioning.
        target_size: (H, W) of the ``target_size`` conditioning.
    """
    patch = int(transformer.config.patch_size)
    grid = (size[0] // 8 // patch, size[1] // 8 // patch)
    meta = [*(original_size or PIPELINE_ORIGINAL_SIZE), *(target_size or size), 0, 0]
    return {
        "image_meta_size": torch.tensor([meta], dtype=dtype, device=device).repeat(batch, 1),
        "style": torch.zeros(batch, dtype=torch.long, device=device),
        "image_rotary_emb": hunyuan_rotary_emb(transformer, grid, device),
    }


def attention_probs(attn: nn.Module, hidden: Tensor, context: Tensor | None, rope) -> Tensor:
    """The softmax attention probabilities (B, heads, L, S) of a HunyuanDiT attention layer,
    computed from its weights as ``HunyuanAttnProcessor2_0`` attends (per-head qk LayerNorm,
    then the rotary embedding: on queries, and on keys in self-attention); the projections run
    without their hooks, in fp32.

    Args:
        attn: ``attn1`` or ``attn2`` of a ``HunyuanDiTBlock``.
        hidden: its ``hidden_states`` (B, L, C).
        context: its ``encoder_hidden_states`` (B, S, C_text) or None (self-attention).
        rope: the (cos, sin) rotary embedding or None.
    """
    from diffusers.models.embeddings import apply_rotary_emb

    heads = attn.heads
    keys_in = hidden if context is None else context
    query = attn.to_q.forward(hidden)
    key = attn.to_k.forward(keys_in)
    head_dim = key.shape[-1] // heads
    query = query.unflatten(-1, (heads, head_dim)).transpose(1, 2)  # (B, heads, L, d)
    key = key.unflatten(-1, (heads, head_dim)).transpose(1, 2)  # (B, heads, S, d)
    query, key = attn.norm_q(query), attn.norm_k(key)
    if rope is not None:
        query = apply_rotary_emb(query, rope)
        if context is None:
            key = apply_rotary_emb(key, rope)
    scores = query.float() @ key.float().transpose(-1, -2) * head_dim**-0.5  # (B, heads, L, S)
    return scores.softmax(dim=-1).to(hidden.dtype)


class HunyuanRecorder(HookRecorder):
    """Records HunyuanDiT activations with forward hooks; nothing is swapped: the maps are
    computed beside the layer's own processor from its inputs (:func:`attention_probs`), so
    recording never changes the pass.

    Args:
        transformer: a ``HunyuanDiT2DModel``.
        names: activation names (checked against ``catalogue``).
        catalogue: the transformer's catalogue.
        early_exit: stop the pass once the last requested activation is recorded.
        output_device: move recorded tensors there.
        detach: store tensors detached from the autograd graph.
    """

    map_kinds = MAP_KINDS

    def __init__(self, transformer: nn.Module, names, catalogue, *, early_exit: bool = True,
                 output_device=None, detach: bool = True):  # fmt: skip
        super().__init__(transformer, names, catalogue, early_exit=early_exit,
                         output_device=output_device, detach=detach)  # fmt: skip
        self._patch = int(transformer.config.patch_size)

    def _pre(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        self._grid = (hidden.shape[-2] // self._patch, hidden.shape[-1] // self._patch)
        if "in" in self._kinds:
            self.record(self._kinds["in"], hidden.clone())

    def _tokens(self, spec: LayerSpec):
        def hook(module, args, output):
            self.record(spec.name, tokens_to_map(output, *self._grid))

        return hook

    def _map(self, spec: LayerSpec):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            context = kwargs.get("encoder_hidden_states")
            probs = attention_probs(module, hidden, context, kwargs.get("image_rotary_emb"))
            self.record(spec.name, probs_to_map(probs, *self._grid))

        return hook

    def _out(self, spec: LayerSpec):
        def hook(module, args, output):
            value = output[0] if isinstance(output, tuple) else output.sample
            self.record(spec.name, value.clone())

        return hook

    def _check_tokens(self, spec: LayerSpec) -> None:
        if spec.kind == "ffn-inner":
            _check_unchunked(self._module(spec.module.rsplit(".ff.", 1)[0]), spec.name)
        if spec.kind.startswith(("self-", "cross-")):
            attn = self._module(spec.module.rsplit(".", 1)[0])
            if getattr(attn, "fused_projections", False):
                raise ValueError(
                    f"{spec.module}: fused q/k/v projections; call "
                    "transformer.unfuse_qkv_projections() first"
                )
            self._heads[spec.name] = attn.heads

    def _install(self) -> None:
        self._kinds = {spec.kind: spec.name for spec in self.specs if spec.kind == "in"}
        super()._install()


class HunyuanDiTBackbone(TransformerBackbone):
    """diffusers ``HunyuanDiT2DModel`` transformers (HunyuanDiT v1.x)."""

    name = "hunyuan"
    title = "HunyuanDiT"
    class_names = ("HunyuanDiT2DModel",)
    text_encoders = ("BertModel", "T5EncoderModel")  # CLIP-BERT, then mT5 (``_2``)
    text_tokens = HUNYUAN_TOKENS
    prefix = "hunyuan-"

    def prompt_tokens(self, max_sequence_length: int | None) -> int:
        """77 + 256: HunyuanDiT's prompt lengths are fixed by its weights (``text_len``,
        ``text_len_t5``), whatever is asked."""
        return HUNYUAN_TOKENS

    def catalogue(self, network: nn.Module) -> list[LayerSpec]:
        return build_hunyuan_catalogue(network)

    def layer_infos(
        self, config: Mapping[str, Any], size: tuple[int, int], text_tokens: int, vae_scale: int
    ) -> list[LayerInfo]:
        """The catalogue with feature shapes from a shape-only pass on the ``meta`` device
        (``text_tokens`` does not apply: the keys are the config's ``text_len + text_len_t5``)."""
        return hunyuan_layer_infos(config, size, vae_scale)


def hunyuan_layer_infos(
    config: Mapping[str, Any], size: tuple[int, int], vae_scale: int = 8
) -> list[LayerInfo]:
    """The HunyuanDiT catalogue with feature shapes for ``size`` images, from a shape-only pass
    on the ``meta`` device.

    Args:
        config: a ``HunyuanDiT2DModel`` config.
        size: (H, W) in px, multiples of ``vae_scale`` x the patch size.
        vae_scale: pixels per latent cell.
    """
    from diffusers import HunyuanDiT2DModel

    config = dict(config)
    height, width = size
    check_image_size(config, height, width, vae_scale * int(config.get("patch_size", 2)), vae_scale)
    with torch.device("meta"):
        model = HunyuanDiT2DModel.from_config(config).eval()
    catalogue = build_hunyuan_catalogue(model)
    meta = {"device": "meta"}
    text, text_t5 = int(config.get("text_len", 77)), int(config.get("text_len_t5", 256))
    latent = torch.empty(1, config["in_channels"], height // vae_scale, width // vae_scale, **meta)
    extra = hunyuan_conditioning(model, 1, (height, width), "meta", torch.float32)
    return recorded_infos(
        HunyuanRecorder,
        model,
        catalogue,
        latent,
        torch.zeros(1, **meta),
        encoder_hidden_states=torch.empty(1, text, config["cross_attention_dim"], **meta),
        text_embedding_mask=torch.ones(1, text, dtype=torch.long, **meta),
        encoder_hidden_states_t5=torch.empty(1, text_t5, config["cross_attention_dim_t5"], **meta),
        text_embedding_mask_t5=torch.ones(1, text_t5, dtype=torch.long, **meta),
        return_dict=False,
        **extra,
    )


HUNYUAN = HunyuanDiTBackbone()
