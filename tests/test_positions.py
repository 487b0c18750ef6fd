"""3D position ids (get_rope_index) against transformers 4.57.6: integers, so exact equality."""

import re

import pytest
import torch

import qvl_minimal as qvl
from qvl_minimal.reference import build_reference, compare

START, END, IMAGE, VIDEO = 151652, 151653, 151655, 151656  # <|vision_start|> <|vision_end|> pads


@pytest.fixture(scope="module")
def ref(tiny_config):
    """The reference model on the meta device: get_rope_index only reads its config."""
    return build_reference(tiny_config, device="meta").model


def prompt(*parts, merge=2) -> list[int]:
    """Token ids: an int n = n random text ids; ("image"|"video", (t, h, w)) = a vision block."""
    ids = []
    for part in parts:
        if isinstance(part, int):
            ids += torch.randint(0, 151000, (part,)).tolist()  # ordinary text ids
        else:
            kind, (t, h, w) = part
            ids += [START] + [IMAGE if kind == "image" else VIDEO] * (t * h * w // merge**2) + [END]
    return ids


def check(config, ref, ids, image_grid_thw=None, video_grid_thw=None, second_per_grid_ts=None,
          attention_mask=None):
    """Ours == reference (called like the model's forward does), exactly, positions and deltas."""
    kwargs = dict(second_per_grid_ts=second_per_grid_ts, attention_mask=attention_mask)
    pos, deltas = qvl.get_rope_index(config, ids, image_grid_thw, video_grid_thw, **kwargs)
    ref_pos, ref_deltas = ref.get_rope_index(ids, image_grid_thw, video_grid_thw, **kwargs)
    assert pos.dtype == deltas.dtype == torch.long
    compare("position_ids", pos, ref_pos)  # integers: exact
    compare("deltas", deltas, ref_deltas)
    return pos, deltas


def test_text_only(tiny_config, ref):
    ids = torch.tensor([prompt(9), prompt(9)])
    pos, deltas = check(tiny_config, ref, ids)
    assert pos[:, 0].tolist() == [list(range(9))] * 3 and deltas.tolist() == [[0], [0]]


def test_text_only_left_padded(tiny_config, ref):
    ids = torch.tensor([prompt(7), prompt(7)])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [1] * 7])
    check(tiny_config, ref, ids, attention_mask=mask)


def test_one_image_mid_text(tiny_config, ref):
    grid = torch.tensor([[1, 4, 6]])  # 2 x 3 merged tokens
    ids = torch.tensor([prompt(3, ("image", (1, 4, 6)), 5)])
    pos, deltas = check(tiny_config, ref, ids, image_grid_thw=grid)
    s = 4  # 3 text ids + <|vision_start|>
    assert pos[:, 0, s:s + 6].tolist() == [[4] * 6, [4, 4, 4, 5, 5, 5], [4, 5, 6, 4, 5, 6]]
    assert pos[0, 0, s + 6].item() == 7  # <|vision_end|>: max + 1


def test_several_images(tiny_config, ref):
    grids = torch.tensor([[1, 2, 8], [1, 6, 2], [1, 4, 4]])
    ids = torch.tensor([prompt(2, ("image", (1, 2, 8)), 3, ("image", (1, 6, 2)), ("image", (1, 4, 4)), 4)])
    check(tiny_config, ref, ids, image_grid_thw=grids)


@pytest.mark.parametrize("seconds", [1.0, 2.0])  # fps 2 (the default) and fps 1
def test_long_video(tiny_config, ref, seconds):
    grid = torch.tensor([[8, 4, 4]])  # time extent (8 steps) exceeds height and width (2 merged)
    ids = torch.tensor([prompt(3, ("video", (8, 4, 4)), 6)])
    pos, _ = check(tiny_config, ref, ids, video_grid_thw=grid, second_per_grid_ts=torch.tensor([seconds]))
    step = int(seconds * tiny_config.vision_config.tokens_per_second)
    assert pos[0, 0, 4::4][:8].tolist() == [4 + k * step for k in range(8)]  # one id per time step


def test_image_and_video(tiny_config, ref):
    ids = torch.tensor([prompt(2, ("video", (4, 6, 4)), 3, ("image", (1, 4, 8)), 2, ("video", (2, 2, 2)), 3)])
    check(tiny_config, ref, ids, image_grid_thw=torch.tensor([[1, 4, 8]]),
          video_grid_thw=torch.tensor([[4, 6, 4], [2, 2, 2]]), second_per_grid_ts=torch.tensor([1.0, 2.0]))


def test_left_padded_batch(tiny_config, ref):
    a = prompt(2, ("image", (1, 4, 4)), 3)  # 11 tokens
    b = prompt(3, ("video", (4, 2, 4)), 2, ("image", (1, 2, 2)), 4)  # 22 tokens
    ids = torch.tensor([[0] * (len(b) - len(a)) + a, b])
    mask = torch.tensor([[0] * (len(b) - len(a)) + [1] * len(a), [1] * len(b)])
    pos, deltas = check(tiny_config, ref, ids, image_grid_thw=torch.tensor([[1, 4, 4], [1, 2, 2]]),
                        video_grid_thw=torch.tensor([[4, 2, 4]]), second_per_grid_ts=torch.tensor([1.0]),
                        attention_mask=mask)
    assert pos[:, 0, len(b) - len(a)].tolist() == [0, 0, 0]  # the first real token is numbered 0
    assert deltas[0].item() == -(len(b) - len(a)) - 2  # an image of 2 x 2 merged tokens saves 2 ids


def test_decoding_continues_at_cache_position_plus_delta(tiny_config):
    """Prompt + 3 generated tokens, numbered at once == each new token at cache position + delta."""
    grid = torch.tensor([[6, 4, 4]])
    ids = torch.tensor([prompt(3, ("video", (6, 4, 4)), 2)])
    _, delta = qvl.get_rope_index(tiny_config, ids, video_grid_thw=grid)
    longer = torch.cat([ids, torch.tensor([prompt(3)])], dim=1)
    full, _ = qvl.get_rope_index(tiny_config, longer, video_grid_thw=grid)
    cache_positions = torch.arange(ids.shape[1], longer.shape[1])
    assert full[:, 0, ids.shape[1]:].tolist() == [(cache_positions + delta[0]).tolist()] * 3


def test_fractional_seconds_per_grid(tiny_config, ref):
    """0.5 s per grid (fps 4): the original rule gives time ids 0, 1, 2, 3 (floor(k * 0.5 * 2)).

    transformers 4.57.6 casts second_per_grid_t to an integer first (0.5 -> 0), collapsing all
    time ids to 0; fixed upstream in transformers PR #48669. We keep the original rule.
    """
    grid = torch.tensor([[4, 2, 2]])
    ids = torch.tensor([prompt(1, ("video", (4, 2, 2)), 1)])
    sec = torch.tensor([0.5])
    pos, _ = qvl.get_rope_index(tiny_config, ids, video_grid_thw=grid, second_per_grid_ts=sec)
    assert pos[0, 0, 2:6].tolist() == [2, 3, 4, 5]  # start 2, + floor(k * 0.5 * 2)
    ref_pos, _ = ref.get_rope_index(ids, None, grid, second_per_grid_ts=sec)
    assert ref_pos[0, 0, 2:6].tolist() == [2, 2, 2, 2]  # the 4.57.6 truncation


@pytest.mark.parametrize("case, message", [
    ("too_few_pads", "needs 4 <|image_pad|> tokens but the prompt has a run of only 3"),
    ("too_many_pads", "more <|image_pad|> tokens than image_grid_thw"),
    ("grids_without_pads", "describes 2 images but input_ids hold <|image_pad|> tokens for only 1"),
    ("pads_without_grids", "image_grid_thw is empty"),
    ("seconds_count", "second_per_grid_ts has 2 entries for 1 videos"),
    ("odd_grid", "image_grid_thw: sides h and w must be multiples of the merge size 2"),
    ("one_dim_ids", "input_ids must be (batch, seq_len)"),
    ("mask_shape", "attention_mask shape"),
])
def test_bad_input(tiny_config, case, message):
    one = torch.tensor([[1, 4, 4]])
    ids = torch.tensor([prompt(2, ("image", (1, 4, 4)), 2)])
    args = {
        "too_few_pads": (torch.tensor([[1, 2, 3, START, IMAGE, IMAGE, IMAGE, END]]), one, None, None, None),
        "too_many_pads": (torch.tensor([prompt(1, ("image", (1, 4, 6)), 1)]), one, None, None, None),
        "grids_without_pads": (ids, torch.tensor([[1, 4, 4], [1, 2, 2]]), None, None, None),
        "pads_without_grids": (ids, None, None, None, None),
        "seconds_count": (torch.tensor([prompt(1, ("video", (2, 2, 2)))]), None, torch.tensor([[2, 2, 2]]),
                          torch.tensor([1.0, 1.0]), None),
        "odd_grid": (ids, torch.tensor([[1, 4, 3]]), None, None, None),
        "one_dim_ids": (ids[0], one, None, None, None),
        "mask_shape": (ids, one, None, None, torch.ones(1, 3, dtype=torch.long)),
    }[case]
    with pytest.raises(ValueError, match=re.escape(message)):
        qvl.get_rope_index(tiny_config, *args)
