"""3D position ids for M-RoPE (多模态旋转位置编码): every token gets a (time, height, width) triple.

Text tokens count 0, 1, 2, ... on all three axes at once, exactly like a 1D language model. A
block of visual tokens (one image or one video, in merged 2 x 2 units) starting at index s gets

    t = s + floor(k * second_per_grid_t * tokens_per_second)   for time step k (always 0 for an image)
    h = s + row,  w = s + col

so its three ids spread over a small 3D box instead of a long 1D run. The token after a block
starts at max(all ids so far) + 1. The last id + 1 - seq_len is the sequence's `delta`: while
decoding with a KV cache, a new token at cache position p gets the id p + delta on all three axes.

Left padding (attention_mask == 0) is skipped when numbering; padded slots hold the filler 1, as
in the reference.

One deliberate difference from transformers 4.57.6: it casts second_per_grid_t to an integer
before multiplying, so a video sampled at other than 2 fps (e.g. 0.5 s per time step) gets
squeezed or collapsed time ids. We keep the original rule above; at 2 fps (1.0 s per step, the
default) both agree exactly. Chapters 07 and 10 and tests/test_positions.py show both.
"""

from __future__ import annotations

import torch
from einops import rearrange

from .config import Qwen25VLConfig
from .vision import check_grid

PAD_FILL = 1  # the reference writes 1 at padded positions (their value never matters: masked out)


def text_positions(length: int, start: int) -> torch.Tensor:
    """`length` text tokens from `start`: the same running index on t, h and w. -> (3, length)"""
    return (torch.arange(length) + start).expand(3, length)  # (3, length)


def vision_positions(grid_thw, start: int, merge: int, second_per_grid: float = 0.0,
                     tokens_per_second: int = 2) -> torch.Tensor:
    """One image or video of patch grid (t, h, w) starting at `start`. -> (3, t * h/merge * w/merge)

    Rows and columns count merged tokens (merge x merge patches each); time step k sits at
    floor(k * second_per_grid * tokens_per_second), i.e. ids advance `tokens_per_second` per second
    of video. An image has second_per_grid = 0, so all its time ids equal `start`.
    """
    t, h, w = (int(x) for x in grid_thw)
    time = (torch.arange(t, dtype=torch.float64) * second_per_grid * tokens_per_second).floor().long()  # (t,)
    tt, hh, ww = torch.meshgrid(time, torch.arange(h // merge), torch.arange(w // merge), indexing="ij")
    grid = torch.stack([tt, hh, ww])  # (3, t, h/merge, w/merge)
    return rearrange(grid, "axes t h w -> axes (t h w)") + start  # (3, tokens)


class _Visuals:
    """The images' (or the videos') grids, handed out in order across the whole batch."""

    def __init__(self, kind: str, token: str, grids, seconds, merge: int):
        self.kind, self.token, self.merge, self.used = kind, token, merge, 0
        self.grids = [] if grids is None or len(grids) == 0 else check_grid(grids, merge, f"{kind}_grid_thw").tolist()
        self.seconds = seconds

    def take(self) -> tuple[tuple[int, int, int], float, int]:
        """The next grid, its seconds per time step, and its number of merged tokens."""
        if not self.grids:
            raise ValueError(f"input_ids hold {self.token} tokens but {self.kind}_grid_thw is empty; pass the "
                             f"grids returned by preprocess_{self.kind}, one row per {self.kind}")
        if self.used == len(self.grids):
            raise ValueError(f"input_ids hold more {self.token} tokens than {self.kind}_grid_thw describes "
                             f"({len(self.grids)} {self.kind}s); pass one grid per {self.kind}, in prompt order")
        t, h, w = self.grids[self.used]
        seconds = 0.0 if self.seconds is None else float(self.seconds[self.used])
        self.used += 1
        return (t, h, w), seconds, t * (h // self.merge) * (w // self.merge)

    def check_all_used(self):
        if self.used != len(self.grids):
            raise ValueError(f"{self.kind}_grid_thw describes {len(self.grids)} {self.kind}s but input_ids hold "
                             f"{self.token} tokens for only {self.used}; each {self.kind} needs "
                             f"t*h*w/{self.merge ** 2} {self.token} tokens in the prompt")


def sequence_positions(ids: torch.Tensor, config: Qwen25VLConfig, images: _Visuals, videos: _Visuals):
    """Position ids of one unpadded sequence (L,): text runs and vision blocks in turn. -> (3, L)"""
    kinds = (ids == config.image_token_id).long() + 2 * (ids == config.video_token_id).long()  # (L,) 0/1/2
    runs, lengths = torch.unique_consecutive(kinds, return_counts=True)
    chunks, start = [], 0
    for kind, length in zip(runs.tolist(), lengths.tolist()):
        if kind == 0:
            chunks.append(text_positions(length, start))
            start += length
            continue
        visuals = images if kind == 1 else videos
        while length > 0:  # a run of pad tokens may hold several back-to-back images
            grid, seconds, n = visuals.take()
            if n > length:
                raise ValueError(f"{visuals.kind} {visuals.used - 1} (grid {grid}) needs {n} {visuals.token} "
                                 f"tokens but the prompt has a run of only {length}; insert exactly "
                                 f"t*h*w/{visuals.merge ** 2} pad tokens per {visuals.kind}")
            block = vision_positions(grid, start, visuals.merge, seconds, config.vision_config.tokens_per_second)
            chunks.append(block)
            start = int(block.max()) + 1
            length -= n
    return torch.cat(chunks, dim=1) if chunks else torch.zeros(3, 0, dtype=torch.long)  # (3, L)


def get_rope_index(config: Qwen25VLConfig, input_ids: torch.Tensor, image_grid_thw=None, video_grid_thw=None,
                   second_per_grid_ts=None, attention_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The (t, h, w) position ids of a batch of prompts and each prompt's decoding delta.

    input_ids (B, L) hold `<|image_pad|>` / `<|video_pad|>` placeholders, t*h*w/4 per image / video;
    image_grid_thw (num_images, 3) and video_grid_thw (num_videos, 3) list the patch grids in prompt
    order across the batch; second_per_grid_ts (num_videos,) is each video's seconds per time step
    (temporal_patch_size / fps; 1.0 if not given); attention_mask (B, L) marks padding with 0.
    Returns position_ids (3, B, L) and deltas (B, 1) = last id + 1 - L.
    """
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (batch, seq_len), got shape {tuple(input_ids.shape)}; "
                         "add a batch axis with input_ids[None]")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape "
                         f"{tuple(input_ids.shape)}; give one 0/1 flag per token")
    num_videos = 0 if video_grid_thw is None else len(video_grid_thw)
    if second_per_grid_ts is None:
        second_per_grid_ts = [1.0] * num_videos  # the reference's default
    elif len(second_per_grid_ts) != num_videos:
        raise ValueError(f"second_per_grid_ts has {len(second_per_grid_ts)} entries for {num_videos} videos; "
                         "give one value (temporal_patch_size / fps) per video")
    merge = config.vision_config.spatial_merge_size
    images = _Visuals("image", "<|image_pad|>", image_grid_thw, None, merge)
    videos = _Visuals("video", "<|video_pad|>", video_grid_thw, second_per_grid_ts, merge)

    batch, seq_len = input_ids.shape
    keep = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask == 1  # (B, L)
    position_ids = torch.full((3, batch, seq_len), PAD_FILL, dtype=torch.long)  # (3, B, L)
    deltas = torch.zeros(batch, 1, dtype=torch.long)  # (B, 1)
    for b in range(batch):
        positions = sequence_positions(input_ids[b][keep[b]].cpu(), config, images, videos)  # (3, real tokens)
        position_ids[:, b, keep[b].cpu()] = positions
        last = int(positions.max()) if positions.numel() else -1
        deltas[b] = last + 1 - seq_len
    images.check_all_used()
    videos.check_all_used()
    return position_ids.to(input_ids.device), deltas.to(input_ids.device)
