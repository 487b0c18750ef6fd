"""Qwen3-VL's vision tower: what changed from `qvl_minimal.vision`, and what is reused.

    pixel_values (N, 1536)          one row per 2 x 16 x 16 x RGB patch (patch 16, was 14)
    patch_embed                     (N, 1152)    the same Conv3d-as-Linear, now with a bias
    + pos_embed, interpolated       (N, 1152)    NEW: a learned 48 x 48 table resized to each grid
    depth x Qwen3VisionBlock        (N, 1152)    LayerNorm, full attention per frame, GELU(tanh) MLP
      after block i in deepstack_visual_indexes: deepstack_merger_list[j] -> (N/4, D)   NEW
    merger                          (N/4, D)     LayerNorm, 2 x 2 patches -> 4608, GELU MLP to D

Rows stay in merge-unit order all the way (no window permutation: there are no windows).
Reused unchanged: the 2D rotary angles (`vision_rotary_angles`), the attention module
(`VisionAttention`: qkv/proj with biases) and `varlen_attention` over one segment per frame.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from ..vision import (PatchEmbed, VisionAttention, check_grid, check_pixels, full_cu_seqlens,
                      vision_rotary_angles)
from .config import Qwen3VisionConfig


def interpolate_positions(table: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bilinear resize of the learned (S*S, C) position table to an h x w patch grid. -> (h, w, C)

    Corners align (align_corners): patch row i reads table row i * (S - 1) / (h - 1), between the
    rows floor and floor + 1 (clipped at S - 1), weighted by the fraction; the same for columns.
    """
    side = round(table.shape[0] ** 0.5)
    grid = rearrange(table, "(r c) d -> r c d", r=side)  # (S, S, C)
    rows, cols = torch.linspace(0, side - 1, h), torch.linspace(0, side - 1, w)  # (h,), (w,) float32
    r0, c0 = rows.long(), cols.long()  # floor (positions are >= 0)
    r1, c1 = (r0 + 1).clamp(max=side - 1), (c0 + 1).clamp(max=side - 1)
    dr, dc = (rows - r0).to(table.dtype), (cols - c0).to(table.dtype)  # (h,), (w,) fractions
    corners = [(r0, c0, (1 - dr)[:, None] * (1 - dc)), (r0, c1, (1 - dr)[:, None] * dc),
               (r1, c0, dr[:, None] * (1 - dc)), (r1, c1, dr[:, None] * dc)]  # weights (h, w)
    return sum(grid[r][:, c] * weight[..., None] for r, c, weight in corners)  # (h, w, C)


def position_embeddings(table: torch.Tensor, grid_thw, merge: int) -> torch.Tensor:
    """The interpolated table for every patch, in the rows' merge-unit order. -> (N, C)"""
    out = []
    for t, h, w in check_grid(grid_thw, merge).tolist():
        pos = interpolate_positions(table, h, w)  # (h, w, C)
        pos = rearrange(pos, "(gh a) (gw b) d -> (gh gw a b) d", a=merge, b=merge)  # merge-unit order
        out.append(pos.repeat(t, 1))  # (t*h*w, C): every frame gets the same positions
    return torch.cat(out)  # (N, C)


class VisionMLP(nn.Module):
    """linear_fc2(gelu_tanh(linear_fc1(x))): a plain two-layer MLP (Qwen2.5-VL: SwiGLU)."""

    def __init__(self, config: Qwen3VisionConfig):
        super().__init__()
        self.linear_fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.linear_fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act_fn = nn.GELU(approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(self.act_fn(self.linear_fc1(x)))


class Qwen3VisionBlock(nn.Module):
    """x + attn(norm1(x)), then x + mlp(norm2(x)); LayerNorm (mean removed, with a bias), not RMSNorm."""

    def __init__(self, config: Qwen3VisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=1e-6)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=1e-6)
        self.attn = VisionAttention(config)
        self.mlp = VisionMLP(config)

    def forward(self, x, cu_seqlens, cos, sin):
        x = x + self.attn(self.norm1(x), cu_seqlens, cos, sin)  # (N, C)
        return x + self.mlp(self.norm2(x))  # (N, C)


class Qwen3PatchMerger(nn.Module):
    """LayerNorm, then each 2 x 2 unit (4 consecutive rows) -> one token through a GELU MLP.

    The final merger normalises each patch (C wide) before joining the four; the DeepStack mergers
    (postshuffle) normalise the joined 4C-wide vector.
    """

    def __init__(self, config: Qwen3VisionConfig, postshuffle: bool = False):
        super().__init__()
        self.unit, self.postshuffle = config.spatial_merge_size**2, postshuffle
        wide = config.hidden_size * self.unit  # 4608
        self.norm = nn.LayerNorm(wide if postshuffle else config.hidden_size, eps=1e-6)
        self.linear_fc1 = nn.Linear(wide, wide)
        self.act_fn = nn.GELU()  # exact (erf) GELU here
        self.linear_fc2 = nn.Linear(wide, config.out_hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.postshuffle:
            x = self.norm(rearrange(x, "(u k) d -> u (k d)", k=self.unit))  # (N/4, 4C)
        else:
            x = rearrange(self.norm(x), "(u k) d -> u (k d)", k=self.unit)  # (N/4, 4C)
        return self.linear_fc2(self.act_fn(self.linear_fc1(x)))  # (N/4, D)


class Qwen3VisionModel(nn.Module):
    """forward(pixel_values (N, 1536), grid_thw (n, 3)) -> (tokens (N/4, D), [DeepStack (N/4, D)] * k)."""

    def __init__(self, config: Qwen3VisionConfig):
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config, bias=True)
        self.pos_embed = nn.Embedding(config.num_position_embeddings, config.hidden_size)
        self.blocks = nn.ModuleList(Qwen3VisionBlock(config) for _ in range(config.depth))
        self.merger = Qwen3PatchMerger(config)
        self.deepstack_merger_list = nn.ModuleList(
            Qwen3PatchMerger(config, postshuffle=True) for _ in config.deepstack_visual_indexes)

    def forward(self, pixel_values: torch.Tensor, grid_thw) -> tuple[torch.Tensor, list[torch.Tensor]]:
        cfg, merge = self.config, self.config.spatial_merge_size
        grid = check_grid(grid_thw, merge)
        check_pixels(pixel_values, grid, cfg.patch_dim)

        x = self.patch_embed(pixel_values)  # (N, C)
        x = x + position_embeddings(self.pos_embed.weight, grid, merge).to(x.device)  # (N, C)
        angles = vision_rotary_angles(grid, cfg.head_dim, merge).to(x.device)  # (N, hd/2)
        emb = torch.cat([angles, angles], dim=-1)[:, None, :]  # (N, 1, hd): broadcast over heads
        cos, sin = emb.cos(), emb.sin()
        cu = full_cu_seqlens(grid)  # (frames + 1,): every block attends within a whole frame
        deepstack = []
        for i, block in enumerate(self.blocks):
            x = block(x, cu, cos, sin)  # (N, C)
            if i in cfg.deepstack_visual_indexes:
                merger = self.deepstack_merger_list[cfg.deepstack_visual_indexes.index(i)]
                deepstack.append(merger(x))  # (N/4, D)
        return self.merger(x), deepstack  # (N/4, D), k x (N/4, D)
