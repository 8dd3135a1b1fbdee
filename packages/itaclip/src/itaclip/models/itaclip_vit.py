"""ITACLIP image encoder: a wrapper around an open_clip ``VisionTransformer``.

The wrapper reads the tower's weights and re-runs its forward pass with the ITACLIP changes;
it never modifies the tower or open_clip, so the same CLIP keeps working as a normal CLIP.

* Self-self attention: ``A = softmax(q q^T s) + softmax(k k^T s)`` (rows sum to 2).
* Intermediate-layer fusion: the self-self maps of a few middle blocks (computed from each
  block's input) are averaged per head into ``A_mid``; the last block uses
  ``A = (1 - w) A_last + w A_mid`` with ``w = 0.5``.
* The last block keeps its residual and output projection but drops its MLP.
* ``ln_post`` and ``proj`` are applied to every token; CLS is dropped; tokens are L2-normalised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ATTENTION_BACKENDS = ("auto", "sdpa", "reference")
REFERENCE_DEPTH = 12
REFERENCE_MID_LAYERS = (7, 8, 10)


def default_mid_layers(depth: int) -> tuple[int, ...]:
    """1-based intermediate layers: (7, 8, 10) for 12 blocks, scaled by ``depth / 12`` otherwise.

    Scaled layers are rounded half up, clamped to ``[1, depth - 1]`` and deduplicated; a
    one-block tower has none.
    """
    if depth < 2:
        return ()
    scaled = {
        min(max(math.floor(layer * depth / REFERENCE_DEPTH + 0.5), 1), depth - 1)
        for layer in REFERENCE_MID_LAYERS
    }
    return tuple(sorted(scaled))


@dataclass
class ITACLIPEncoderConfig:
    """Settings of the ITACLIP image encoder.

    Args:
        mid_layers: 1-based indices of the blocks whose self-self attention maps are fused into
            the last block, each in ``[1, depth - 1]``; ``None`` = ``default_mid_layers(depth)``.
        mid_weight: share of the intermediate maps in the last block's attention.
        attention_backend: ``"sdpa"`` (never materialises N x N maps), ``"reference"`` (explicit
            softmax maps, the oracle) or ``"auto"`` (sdpa).
    """

    mid_layers: tuple[int, ...] | None = None
    mid_weight: float = 0.5
    attention_backend: str = "auto"


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, N, D) -> (B, heads, N, D / heads)."""
    batch, tokens, dim = x.shape
    return x.reshape(batch, tokens, heads, dim // heads).transpose(1, 2)  # (B, heads, N, d)


def merge_heads(x: Tensor) -> Tensor:
    """(B, heads, N, d) -> (B, N, heads * d)."""
    batch, heads, tokens, dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * dim)  # (B, N, heads*d)


def self_self_attention_map(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """``softmax(q q^T scale) + softmax(k k^T scale)``: (B, heads, N, d) -> (B, heads, N, N)."""
    query_map = (q @ q.transpose(-2, -1) * scale).softmax(-1)  # (B, heads, N, N)
    key_map = (k @ k.transpose(-2, -1) * scale).softmax(-1)  # (B, heads, N, N)
    return query_map + key_map


def _self_self_apply_sdpa(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """``self_self_attention_map(q, k) @ v`` without forming the map; (B, heads, N, d)."""
    return F.scaled_dot_product_attention(q, q, v, scale=scale) + F.scaled_dot_product_attention(
        k, k, v, scale=scale
    )


def fused_attention_output(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mid_qk: list[tuple[Tensor, Tensor]],
    scale: float,
    mid_weight: float,
    backend: str,
) -> Tensor:
    """``((1 - w) A(q, k) + w mean_l A(q_l, k_l)) @ v`` with ``A`` the self-self map.

    Args:
        q: (B, heads, N, d) queries of the last block.
        k: (B, heads, N, d) keys of the last block.
        v: (B, heads, N, d) values of the last block.
        mid_qk: (q_l, k_l) pairs of the intermediate blocks; empty = no fusion.
        scale: attention scale (head_dim ** -0.5).
        mid_weight: ``w``.
        backend: ``"sdpa"`` or ``"reference"``.

    Returns:
        (B, heads, N, d) attention output.
    """
    if backend == "reference":
        attn = self_self_attention_map(q, k, scale)  # (B, heads, N, N)
        if mid_qk:
            mid = torch.stack([self_self_attention_map(ql, kl, scale) for ql, kl in mid_qk])
            attn = (1 - mid_weight) * attn + mid_weight * mid.mean(0)  # (B, heads, N, N)
        return attn @ v
    out = _self_self_apply_sdpa(q, k, v, scale)
    if not mid_qk:
        return out
    mid = sum(_self_self_apply_sdpa(ql, kl, v, scale) for ql, kl in mid_qk) / len(mid_qk)
    return (1 - mid_weight) * out + mid_weight * mid


def interpolate_pos_embed(pos_embed: Tensor, grid: tuple[int, int], new_grid: tuple[int, int]):
    """Bicubic resize of a (1 + gh*gw, D) positional table to ``new_grid``; CLS row kept."""
    if tuple(grid) == tuple(new_grid):
        return pos_embed
    cls_pos, patch_pos = pos_embed[:1], pos_embed[1:]
    dim = patch_pos.shape[-1]
    patch_pos = patch_pos.reshape(1, grid[0], grid[1], dim).permute(0, 3, 1, 2)  # (1, D, gh, gw)
    patch_pos = F.interpolate(
        patch_pos.float(), size=new_grid, mode="bicubic", align_corners=False
    ).to(pos_embed.dtype)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(-1, dim)  # (h*w, D)
    return torch.cat([cls_pos, patch_pos])  # (1 + h*w, D)


def check_vision_tower(visual: nn.Module) -> None:
    """Raise a ``TypeError`` saying why ``visual`` is not a supported open_clip ViT tower."""
    needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "ln_post", "proj")
    missing = [name for name in needed if not hasattr(visual, name)]
    if missing or not hasattr(visual, "transformer"):
        raise TypeError(
            "visual must be an open_clip VisionTransformer (model.visual of a ViT CLIP); "
            f"{type(visual).__name__} lacks {', '.join(missing) or 'transformer'}"
        )
    if getattr(visual, "attn_pool", None) is not None:
        raise TypeError("visual towers with attentional pooling are not supported")
    if visual.proj is None:
        raise TypeError("visual must have an output projection (proj is None)")
    for i, block in enumerate(visual.transformer.resblocks):
        if not isinstance(getattr(block, "attn", None), nn.MultiheadAttention):
            raise TypeError(
                f"block {i} has no nn.MultiheadAttention 'attn' (custom open_clip blocks with "
                "qk-norm or scaled cosine attention are not supported)"
            )


class ITACLIPVisionEncoder(nn.Module):
    """Dense, L2-normalised patch features of an open_clip ViT with the ITACLIP changes.

    Args:
        visual: ``model.visual`` of an open_clip ViT CLIP; used read-only.
        config: encoder settings.
    """

    def __init__(self, visual: nn.Module, config: ITACLIPEncoderConfig | None = None) -> None:
        super().__init__()
        check_vision_tower(visual)
        config = config or ITACLIPEncoderConfig()
        if config.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"attention_backend must be one of {ATTENTION_BACKENDS}, got "
                f"{config.attention_backend!r}"
            )
        if not 0.0 <= config.mid_weight <= 1.0:
            raise ValueError(f"mid_weight must be in [0, 1], got {config.mid_weight}")
        self.visual = visual
        self.config = config
        depth = len(visual.transformer.resblocks)
        layers = default_mid_layers(depth) if config.mid_layers is None else config.mid_layers
        bad = [layer for layer in layers if not 1 <= int(layer) <= depth - 1]
        if bad:
            raise ValueError(
                f"mid_layers must be 1-based block indices in [1, {depth - 1}] for a "
                f"{depth}-block tower (the last block is fused, not fused into), got {bad}"
            )
        self.mid_layers = tuple(sorted({int(layer) for layer in layers}))
        self.backend = "sdpa" if config.attention_backend == "auto" else config.attention_backend

    @property
    def patch_size(self) -> tuple[int, int]:
        """(ph, pw) patch size of the tower."""
        return tuple(self.visual.conv1.kernel_size)

    @property
    def out_dim(self) -> int:
        """Feature dimension (the CLIP embedding size)."""
        return self.visual.proj.shape[1]

    def embed(self, pixels: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Patch + CLS embedding with (interpolated) positions and ln_pre; (B, 1 + h*w, D)."""
        visual = self.visual
        x = visual.conv1(pixels.to(visual.conv1.weight.dtype))  # (B, D, h, w)
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, D)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + h*w, D)
        pos = interpolate_pos_embed(visual.positional_embedding, visual.grid_size, grid)
        return visual.ln_pre(x + pos.to(x.dtype)), grid

    def qkv(self, block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v of ``block`` from ``ln_1(x)``; each (B, heads, N, d)."""
        attn = block.attn
        qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)  # (B, N, 3D)
        q, k, v = qkv.chunk(3, dim=-1)
        return tuple(split_heads(t, attn.num_heads) for t in (q, k, v))

    def run_block(self, block: nn.Module, x: Tensor) -> Tensor:
        """The unchanged open_clip block on batch-first (B, N, D) tokens."""
        if getattr(self.visual.transformer, "batch_first", True):
            return block(x)
        return block(x.transpose(0, 1)).transpose(0, 1)  # (N, B, D) inside the block

    def run_block_keeping_qk(self, block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The block's unchanged computation, written out so that its q and k (needed for the
        intermediate self-self maps) come from the same projection as its attention.

        Returns:
            (B, N, D) block output, and q, k as (B, heads, N, d).
        """
        q, k, v = self.qkv(block, x)
        if self.backend == "reference":
            attn = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1) @ v
        else:
            attn = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d)
        x = x + block.ls_1(block.attn.out_proj(merge_heads(attn)))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
        return x, q, k

    def last_block(self, block: nn.Module, x: Tensor, mid_qk: list[tuple[Tensor, Tensor]]):
        """Fused self-self attention with residual and out_proj; no MLP. (B, N, D)."""
        q, k, v = self.qkv(block, x)
        scale = q.shape[-1] ** -0.5
        out = fused_attention_output(
            q, k, v, mid_qk, scale, self.config.mid_weight, self.backend
        )  # (B, heads, N, d)
        out = block.attn.out_proj(merge_heads(out))  # (B, N, D)
        return x + block.ls_1(out)

    def forward(self, pixels: Tensor) -> Tensor:
        """Normalised patch features.

        Args:
            pixels: (B, 3, H, W) mean/std-normalised images, H and W at least one patch.

        Returns:
            (B, h, w, C) L2-normalised patch features, ``h = H // patch``.
        """
        ph, pw = self.patch_size
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be (B, 3, H, W), got {tuple(pixels.shape)}")
        if pixels.shape[-2] < ph or pixels.shape[-1] < pw:
            raise ValueError(
                f"images must be at least one patch ({ph}x{pw}), got {tuple(pixels.shape[-2:])}"
            )
        x, (h, w) = self.embed(pixels)
        blocks = list(self.visual.transformer.resblocks)
        mid_qk = []
        for index, block in enumerate(blocks[:-1], start=1):
            if index in self.mid_layers:
                x, q, k = self.run_block_keeping_qk(block, x)
                mid_qk.append((q, k))
            else:
                x = self.run_block(block, x)
        x = self.last_block(blocks[-1], x, mid_qk)
        x = self.visual.ln_post(x) @ self.visual.proj  # (B, 1 + h*w, C)
        x = F.normalize(x[:, 1:], dim=-1)  # (B, h*w, C)
        return x.reshape(x.shape[0], h, w, -1)  # (B, h, w, C)
