"""Chapter 07's exercises: 3D position ids of one vision block, of a whole prompt, and three quiz questions.

    07.1  my_vision_positions(grid (t, h, w), start, second_per_grid=0.0) -> (3, t * h/2 * w/2)
    07.2  my_rope_index_one(ids (list), images (iterator of grids), videos (iterator of (grid, seconds)))
          -> (3, L): the position ids of one unpadded prompt
    07.3  quiz: (tokens, largest id, delta) of a prompt with the photo
    07.4  quiz: (last relative time id at 2 fps, relative time ids at 1 fps) of a 10-second clip
    07.5  quiz: the position ids of the next token of each row of a left-padded batch after 5 new tokens

Every answer is compared with the library (`qvl_minimal.positions`): images of every shape, a single
merge unit, videos at 2, 1 and 4 fps (fractional seconds per time step, floored after multiplying),
text after a video (one past the largest id, not after the block's length), several images.
"""

from __future__ import annotations

import torch

from ..config import Qwen25VLConfig
from ..positions import get_rope_index, vision_positions
from ..preprocess import smart_resize
from .core import assert_answer, assert_tensor_matches, exercise

CONFIG = Qwen25VLConfig.preset("tiny")  # the real token ids and vision settings
MERGE, TPS = CONFIG.vision_config.spatial_merge_size, CONFIG.vision_config.tokens_per_second
START, END = CONFIG.vision_start_token_id, CONFIG.vision_end_token_id
IMAGE, VIDEO = CONFIG.image_token_id, CONFIG.video_token_id

BLOCKS = [  # (grid, start, second_per_grid, what)
    ((1, 6, 8), 4, 0.0, "an image of 3 x 4 tokens"),
    ((1, 12, 2), 0, 0.0, "a tall image"),
    ((1, 2, 2), 7, 0.0, "a single merge unit"),
    ((8, 4, 4), 4, 1.0, "a video at 2 fps (1 s per time step)"),
    ((5, 6, 4), 10, 2.0, "a video at 1 fps (2 s per time step)"),
    ((4, 2, 2), 2, 0.5, "a video at 4 fps: 0.5 s per step, floored after multiplying"),
    ((6, 4, 6), 3, 2 / 3, "a video at 3 fps: 2/3 s per step"),
]


@exercise("07.1", "position ids of one image or video")
def _(vision_positions_mine) -> str:
    for grid, start, seconds, what in BLOCKS:
        mine = vision_positions_mine(grid, start, seconds)
        expected = vision_positions(grid, start, MERGE, seconds, TPS)
        assert_tensor_matches(mine, expected, f"ids (t, h, w) of grid {grid} from {start}, "
                              f"second_per_grid {seconds:.3g} [{what}]")
    return f"{len(BLOCKS)} blocks incl. a single unit and videos at 4, 3, 2 and 1 fps, exact"


def _prompt(*parts) -> tuple[list[int], list, list]:
    """Token ids of text runs (ints) and vision blocks (("image", grid) / ("video", grid, seconds))."""
    ids, images, videos = [], [], []
    for part in parts:
        if isinstance(part, int):
            ids += torch.randint(0, 151000, (part,)).tolist()
            continue
        grid = part[1]
        ids += [START] + [IMAGE if part[0] == "image" else VIDEO] * (grid[0] * grid[1] * grid[2] // MERGE**2) + [END]
        (images if part[0] == "image" else videos).append(part[1:] if part[0] == "video" else grid)
    return ids, images, videos


PROMPTS = [  # (parts, what)
    ((9,), "text only"),
    ((3, ("image", (1, 6, 8)), 3), "text, an image, text"),
    ((("image", (1, 4, 4)), 2), "an image first"),
    ((2, ("image", (1, 2, 8)), 1, ("image", (1, 6, 2)), ("image", (1, 4, 4)), 2), "three images"),
    ((3, ("video", (8, 4, 4), 1.0), 4), "text after a video: one past its largest id"),
    ((1, ("video", (4, 2, 2), 0.5), 1), "a video at 4 fps"),
    ((2, ("video", (4, 6, 4), 2.0), 3, ("image", (1, 4, 8)), 2), "a video at 1 fps, then an image"),
]


@exercise("07.2", "position ids of a whole prompt")
def _(rope_index_one_mine) -> str:
    for parts, what in PROMPTS:
        ids, images, videos = _prompt(*parts)
        kw = {"image_grid_thw": torch.tensor(images) if images else None,
              "video_grid_thw": torch.tensor([g for g, _ in videos]) if videos else None,
              "second_per_grid_ts": [s for _, s in videos] if videos else None}
        expected = get_rope_index(CONFIG, torch.tensor([ids]), **kw)[0][:, 0]  # (3, L)
        mine = rope_index_one_mine(list(ids), iter([tuple(g) for g in images]), iter([(tuple(g), s) for g, s in videos]))
        layout = " + ".join(str(p) if isinstance(p, int) else f"{p[0]} {p[1]}" for p in parts)
        assert_tensor_matches(mine, expected, f"position ids of [{layout}] [{what}]")
    return f"{len(PROMPTS)} prompts incl. text after a video, fractional seconds and three images, exact"


def _photo_prompt() -> tuple[int, int, int]:
    h, w = smart_resize(600, 512)  # the sample photo
    ids, images, _ = _prompt(10, ("image", (1, h // 14, w // 14)), 5)
    pos, delta = get_rope_index(CONFIG, torch.tensor([ids]), image_grid_thw=torch.tensor(images))
    return len(ids), int(pos.max()), int(delta)


@exercise("07.3", "length, largest id and delta of the photo's prompt", expected=_photo_prompt)
def _(answer) -> str:
    expected = _photo_prompt()
    if not (isinstance(answer, (tuple, list)) and len(answer) == 3):
        raise AssertionError(f"give (tokens, largest id, delta), got {answer!r}")
    for mine, right, what in zip(answer, expected, ("tokens", "largest id", "delta")):
        assert_answer(mine, right, what, hint="an image of h x w tokens uses max(h, w) ids; delta = largest + 1 - L")
    return "exact"


def _clip_time_ids() -> tuple[int, list[int]]:
    at_2fps = vision_positions((10, 32, 32), 0, MERGE, 2 / 2, TPS)[0, :: 16 * 16].tolist()  # one token per step
    at_1fps = vision_positions((5, 32, 32), 0, MERGE, 2 / 1, TPS)[0, :: 16 * 16].tolist()
    return at_2fps[-1], at_1fps


@exercise("07.4", "time ids of a 10-second clip", expected=_clip_time_ids)
def _(answer) -> str:
    last_at_2fps, at_1fps = _clip_time_ids()
    if not (isinstance(answer, (tuple, list)) and len(answer) == 2):
        raise AssertionError(f"give (last time id at 2 fps, [time ids at 1 fps]), got {answer!r}")
    assert_answer(answer[0], last_at_2fps, "last time id at 2 fps", hint="2 frames per step, 2 ids per second")
    mine = list(answer[1]) if isinstance(answer[1], (list, tuple, range)) else answer[1]
    assert_answer(mine, at_1fps, "time ids at 1 fps", hint="how many steps, and how many seconds each?")
    return "exact"


GENERATED = 5  # 07.5: tokens generated before the one asked about


def _next_ids() -> list[int]:
    """07.5's batch: row 0 text, a 6 x 10-patch image, text; row 1 text, a 1 fps video, text; left-padded."""
    a, images, _ = _prompt(4, ("image", (1, 6, 10)), 2)
    b, _, videos = _prompt(2, ("video", (6, 4, 4), 2.0), 3)
    pad = len(b) - len(a)
    ids = torch.tensor([[0] * pad + a, b])
    mask = torch.tensor([[0] * pad + [1] * len(a), [1] * len(b)])
    _, deltas = get_rope_index(CONFIG, ids, image_grid_thw=torch.tensor(images),
                               video_grid_thw=torch.tensor([videos[0][0]]), second_per_grid_ts=[2.0],
                               attention_mask=mask)
    return (ids.shape[1] + GENERATED + deltas[:, 0]).tolist()  # cache position of the next token + delta


@exercise("07.5", "the next position id after 5 generated tokens", expected=_next_ids)
def _(answer) -> str:
    mine = answer.tolist() if isinstance(answer, torch.Tensor) else list(answer) if answer is not None else answer
    assert_answer(mine, _next_ids(), "next position ids (row 0, row 1)",
                  hint="each row continues one past its own largest id, one id per generated token; "
                       "the padding takes no id")
    return "exact"
