"""The vision tower: pixels -> patch features -> 32 blocks -> 2x2 merger -> visual tokens.

    pixel_values (N, 1176)          one row per 2 x 14 x 14 x RGB patch (see preprocess.py)
    patch_embed                     (N, 1280)    a Conv3d whose kernel equals its stride = a Linear
    permute into window order       (N, 1280)    merge units (2 x 2 patches) grouped by 8 x 8-patch windows
    32 x VisionBlock                (N, 1280)    window attention, except full attention in blocks 7/15/23/31
    merger                          (N/4, 2048)  RMSNorm, 2 x 2 patches -> 5120, MLP to the LLM width
    inverse permutation             (N/4, 2048)  back to raster order: one token per merge unit

Positions enter only through a 2D rotary embedding on q and k: each patch's (row, col).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import VisionConfig
from .layers import RMSNorm, SwiGLU, apply_rotary


# ----------------------------------------------------------------------------- inputs
def check_grid(grid_thw, merge_size: int = 2, name: str = "grid_thw") -> torch.Tensor:
    """grid_thw as a LongTensor (num_images, 3) of (t, h, w) in patches; errors name the fix.

    The one check of a grid in the library: the vision tower, the position ids and the
    tokenizer's pad expansion all use it.
    """
    grid = torch.as_tensor(grid_thw)
    if grid.is_floating_point() or grid.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers (t, h, w in patches), got dtype {grid.dtype}")
    if grid.ndim != 2 or grid.shape[1] != 3:
        raise ValueError(f"{name} must have shape (num_images, 3), got {tuple(grid.shape)}; "
                         "wrap a single grid as [[t, h, w]]")
    if (grid <= 0).any():
        raise ValueError(f"{name} entries must be positive, got {grid.tolist()}")
    if (grid[:, 1:] % merge_size).any():
        raise ValueError(f"{name}: sides h and w must be multiples of the merge size {merge_size}, got "
                         f"{grid.tolist()}; resize images to multiples of {merge_size * 14} px (smart_resize)")
    return grid.long()


def check_pixels(pixel_values: torch.Tensor, grid: torch.Tensor, patch_dim: int) -> None:
    """pixel_values must be a float (N, patch_dim) tensor with N = sum of t*h*w over the grid."""
    if not torch.is_tensor(pixel_values) or not pixel_values.is_floating_point():
        kind = pixel_values.dtype if torch.is_tensor(pixel_values) else type(pixel_values).__name__
        raise TypeError(f"pixel_values must be a floating-point tensor (normalised pixels), got {kind}; "
                        "use preprocess_image(), which scales to [0, 1] and normalises")
    if pixel_values.ndim != 2 or pixel_values.shape[1] != patch_dim:
        raise ValueError(f"pixel_values must have shape (num_patches, {patch_dim}), got "
                         f"{tuple(pixel_values.shape)}; flatten each 3 x 2 x 14 x 14 patch into one row")
    expected = int(grid.prod(-1).sum())
    if pixel_values.shape[0] != expected:
        raise ValueError(f"pixel_values has {pixel_values.shape[0]} rows but grid_thw {grid.tolist()} "
                         f"needs sum(t*h*w) = {expected}; pass the grid that came with these pixels")


# ----------------------------------------------------------------------------- patches
class PatchEmbed(nn.Module):
    """Each 1176-wide row (3 channels x 2 frames x 14 x 14) -> one 1280-wide feature.

    The Conv3d's kernel equals its stride and covers the whole row, so it is a Linear(1176 -> 1280)
    without bias; we keep the Conv3d only so the weight has the checkpoint's name and shape.
    """

    def __init__(self, config: VisionConfig, bias: bool = False):  # Qwen3-VL's has a bias
        super().__init__()
        k = (config.temporal_patch_size, config.patch_size, config.patch_size)
        self.proj = nn.Conv3d(config.in_chans, config.hidden_size, k, stride=k, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.proj.weight.flatten(1)  # (1280, 1176): (c, t, h, w) flattened, the row's own order
        return F.linear(x.to(w.dtype), w, self.proj.bias)  # (N, 1280)


def patch_positions(grid_thw, merge_size: int = 2) -> torch.Tensor:
    """(row, col) of every patch in patch units, in the order of pixel_values' rows.

    Rows come in merge-unit order: the 2 x 2 patches of one unit are consecutive, units go row-major;
    every time step of a video repeats the same positions (time is not rotary-encoded in the tower).
    """
    out = []
    for t, h, w in check_grid(grid_thw, merge_size).tolist():
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")  # (h, w) each
        pos = torch.stack([rows, cols], dim=-1)  # (h, w, 2)
        pos = rearrange(pos, "(gh a) (gw b) two -> (gh gw a b) two", a=merge_size, b=merge_size)
        out.append(pos.repeat(t, 1))  # (t*h*w, 2)
    return torch.cat(out)  # (N, 2)


def vision_rotary_angles(grid_thw, head_dim: int, merge_size: int = 2, theta: float = 10000.0) -> torch.Tensor:
    """2D rotary angles (N, head_dim // 2): the first half rotates by row, the second by column.

    head_dim 80 -> 20 frequencies 1 / theta^(2i / 40); angles = cat(freqs * row, freqs * col).
    """
    quarter = head_dim // 2
    freqs = 1.0 / theta ** (torch.arange(0, quarter, 2, dtype=torch.float) / quarter)  # (head_dim // 4,)
    pos = patch_positions(grid_thw, merge_size).float()  # (N, 2)
    angles = pos[:, :, None] * freqs  # (N, 2, head_dim // 4)
    return rearrange(angles, "n two f -> n (two f)")  # (N, head_dim // 2)


# ----------------------------------------------------------------------------- windows
def window_index(grid_thw, config: VisionConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Permutation of merge units into window order, and the window boundaries in patches.

    The merged grid (h/2, w/2) of each time step is cut into windows of side
    window_size / patch_size / merge_size (112 / 14 / 2 = 4 merge units), row-major; the last
    row/column of windows may be smaller. Returns
        index              (N / 4,)          merge unit at each position of the window order
        cu_window_seqlens  (num_windows + 1,) 0, end of window 1, ... (in patches: 4 per unit)
    The reference pads by side - n % side, which adds an all-padding window when n is already a
    multiple of the side, then removes the repeated boundaries with unique_consecutive; padding
    to the next multiple (ceil) gives the same result directly.
    """
    m = config.spatial_merge_size
    side = config.window_size // config.patch_size // m  # window side in merge units
    index, lengths, offset = [], [], 0
    for t, h, w in check_grid(grid_thw, m).tolist():
        gh, gw = h // m, w // m  # merged grid
        ids = torch.arange(t * gh * gw).view(t, gh, gw)  # (t, gh, gw) merge-unit numbers, raster order
        ids = F.pad(ids, (0, -gw % side, 0, -gh % side), value=-1)  # pad to multiples of side with -1
        ids = rearrange(ids, "t (wh a) (ww b) -> (t wh ww) (a b)", a=side, b=side)  # (windows, side^2)
        keep = ids >= 0
        index.append(ids[keep] + offset)  # padding dropped, row-major inside each window
        lengths.append(keep.sum(1) * m * m)  # (windows,) patches per window, never 0
        offset += t * gh * gw
    cu = F.pad(torch.cat(lengths).cumsum(0), (1, 0))  # (num_windows + 1,)
    return torch.cat(index), cu


def full_cu_seqlens(grid_thw) -> torch.Tensor:
    """Boundaries for the full-attention blocks: one segment per time step of each image/video."""
    grid = torch.as_tensor(grid_thw).long()
    frames = torch.repeat_interleave(grid[:, 1] * grid[:, 2], grid[:, 0])  # (sum t,) patches per frame
    return F.pad(frames.cumsum(0), (1, 0))  # (sum t + 1,)


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Attention of (N, heads, head_dim) q/k/v restricted to the segments cu_seqlens marks.

    No N x N mask is ever built: segments of equal length (most windows are 64 patches) are
    gathered into one batch for scaled_dot_product_attention; only the distinct lengths loop.
    """
    q, k, v = (rearrange(x, "n h d -> h n d") for x in (q, k, v))
    starts, lengths = cu_seqlens[:-1].long(), cu_seqlens.diff().long()
    out = torch.empty_like(q)  # (heads, N, head_dim)
    for n in lengths.unique().tolist():
        idx = starts[lengths == n, None].to(q.device) + torch.arange(n, device=q.device)  # (segments, n) rows
        qs, ks, vs = (rearrange(x[:, idx], "h s n d -> s h n d") for x in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs)  # (segments, heads, n, head_dim)
        out[:, idx] = rearrange(o, "s h n d -> h s n d")
    return rearrange(out, "h n d -> n h d")  # (N, heads, head_dim)


# ----------------------------------------------------------------------------- blocks
class VisionAttention(nn.Module):
    """Multi-head self-attention with 2D rotary on q, k; bias on qkv and proj; not causal."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x, cu_seqlens, cos, sin):
        qkv = self.qkv(x)  # (N, 3 * 1280)
        q, k, v = rearrange(qkv, "n (three h d) -> three n h d", three=3, h=self.num_heads)  # (N, 16, 80) each
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)  # cos, sin: (N, 1, 80)
        out = varlen_attention(q, k, v, cu_seqlens)  # (N, 16, 80), scale 80^-0.5
        return self.proj(rearrange(out, "n h d -> n (h d)"))  # (N, 1280)


class VisionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)); the MLP has bias."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.norm1 = RMSNorm(config.hidden_size, eps=1e-6)
        self.attn = VisionAttention(config)
        self.norm2 = RMSNorm(config.hidden_size, eps=1e-6)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size, bias=True)

    def forward(self, x, cu_seqlens, cos, sin):
        x = x + self.attn(self.norm1(x), cu_seqlens, cos, sin)  # (N, 1280)
        return x + self.mlp(self.norm2(x))  # (N, 1280)


class PatchMerger(nn.Module):
    """RMSNorm over 1280-wide patch features, then each 2 x 2 unit (4 consecutive rows) -> one token.

    It merges neighbouring patches; it does not fuse vision with language (that happens later,
    when the tokens replace <|image_pad|> embeddings and the decoder attends over both).
    """

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.unit = config.spatial_merge_size**2  # 4 patches per token
        wide = config.hidden_size * self.unit  # 5120
        self.ln_q = RMSNorm(config.hidden_size, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(wide, wide), nn.GELU(), nn.Linear(wide, config.out_hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(self.ln_q(x), "(u k) d -> u (k d)", k=self.unit)  # (N/4, 5120)
        return self.mlp(x)  # (N/4, out_hidden_size); nn.GELU() is the exact (erf) GELU


# ----------------------------------------------------------------------------- tower
class VisionTransformer(nn.Module):
    """The whole tower: forward(pixel_values (N, 1176), grid_thw (n, 3)) -> (N / 4, out_hidden_size)."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config)
        self.blocks = nn.ModuleList(VisionBlock(config) for _ in range(config.depth))
        self.merger = PatchMerger(config)

    def forward(self, pixel_values: torch.Tensor, grid_thw) -> torch.Tensor:
        cfg, unit = self.config, self.config.spatial_merge_size**2
        grid = check_grid(grid_thw, cfg.spatial_merge_size)
        check_pixels(pixel_values, grid, cfg.patch_dim)

        x = self.patch_embed(pixel_values)  # (N, 1280), merge-unit order
        angles = vision_rotary_angles(grid, cfg.head_dim, cfg.spatial_merge_size).to(x.device)  # (N, 40)
        index, cu_window = window_index(grid, cfg)  # (N/4,), (windows + 1,); bookkeeping stays on the CPU
        index = index.to(x.device)
        cu_full = full_cu_seqlens(grid)  # (frames + 1,)

        def to_windows(y):  # permute whole merge units (4 rows at a time) into window order
            return rearrange(rearrange(y, "(u k) d -> u k d", k=unit)[index], "u k d -> (u k) d")

        x = to_windows(x)  # (N, 1280)
        angles = to_windows(angles)  # (N, 40)
        emb = torch.cat([angles, angles], dim=-1)[:, None, :]  # (N, 1, 80): broadcast over heads
        cos, sin = emb.cos(), emb.sin()
        for i, block in enumerate(self.blocks):
            cu = cu_full if i in cfg.fullatt_block_indexes else cu_window
            x = block(x, cu, cos, sin)  # (N, 1280)
        x = self.merger(x)  # (N/4, out_hidden_size), window order
        return x[torch.argsort(index)]  # (N/4, out_hidden_size), raster order
