"""Figures of the video chapter (10): the frames the model keeps, paired into time steps.

The clip is synthetic (a camera tilting up from the medals to the face of the sample photo and
zooming in), made by `samples.sample_clip`; which frames are kept, the patch grid and the time ids come
from the library's `sample_frame_indices`, `preprocess_video` and `get_rope_index` rule.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from ..config import Qwen25VLConfig
from ..positions import vision_positions
from ..preprocess import TEMPORAL, preprocess_video, sample_frame_indices
from ..samples import sample_clip

def frame_strip(seconds: float = 4.0, video_fps: float = 24.0):
    """Figure 10.1: the frames kept at 2 fps and at 1 fps on one time axis, pairs = time steps."""
    clip = sample_clip(seconds, video_fps)
    vision = Qwen25VLConfig.preset("3b").vision_config
    tps, merge = vision.tokens_per_second, vision.spatial_merge_size  # 2 (the released config), 2
    fig = plt.figure(figsize=(12, 4.4), dpi=80)
    x0, span, thumb_w = 0.035, 0.74, 0.09  # figure fractions: time axis start/length, thumbnail width
    thumb_h = thumb_w * 12 / 4.4 * clip.shape[1] / clip.shape[2]  # keep the frames' aspect

    def x_of(frame):  # a frame's left edge sits at its time on the axis
        return x0 + frame / video_fps / seconds * span

    for r, fps in enumerate((2.0, 1.0)):
        indices, _ = sample_frame_indices(len(clip), video_fps, fps)
        _, grid, spg = preprocess_video(clip, video_fps, fps)
        t, h, w = grid[0].tolist()
        tokens = h * w // merge**2  # per time step
        time_ids = vision_positions((t, h, w), 0, merge, float(spg), tps)[0, ::tokens]  # (t,) one per step
        bottom = 0.64 - r * 0.36
        for idx in indices:
            ax = fig.add_axes((x_of(idx), bottom, thumb_w, thumb_h))
            ax.imshow(clip[idx])
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"frame {idx} ({idx / video_fps:.2f} s)", fontsize=8, pad=2)
        for k in range(t):  # one bracket per time step, under its two frames
            a, b = x_of(indices[TEMPORAL * k]), x_of(indices[TEMPORAL * k + 1]) + thumb_w
            y = bottom - 0.025
            fig.add_artist(plt.Line2D([a, b], [y, y], color="C1", lw=2.5))
            fig.text((a + b) / 2, y - 0.04, f"time step {k}: t id = s + {int(time_ids[k])}",
                     ha="center", va="center", fontsize=9, color="C1")
        fig.text(0.005, bottom + thumb_h / 2, f"{fps:g} fps", rotation=90, ha="left", va="center", fontsize=10)
        fig.text(x0 + span + thumb_w + 0.015, bottom + thumb_h / 2,
                 f"{len(indices)} frames kept\ngrid ({t}, {h}, {w})\n{tokens} tokens per step\n"
                 f"{float(spg):g} s per step", ha="left", va="center", fontsize=9)
    axis = fig.add_axes((x0, 0.13, span, 0.001))  # the shared time axis, in seconds
    axis.set_xlim(0, seconds)
    axis.set_yticks([])
    axis.set_xlabel("seconds into the clip (left edge of each frame = its time)", fontsize=9)
    axis.tick_params(labelsize=8)
    fig.suptitle(f"a {seconds:g} s clip at {video_fps:g} fps ({len(clip)} frames): the frames kept, two per "
                 f"time step (the Conv3d is 2 frames deep); time ids advance {tps} per second", fontsize=10, y=0.99)
    return fig


FIGURES = {"10_video_frames": frame_strip}
