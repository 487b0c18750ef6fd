"""Preprocessing vs the reference: transformers 4.57.6's Qwen2VLImageProcessor, checkpoint settings.

Tolerances: pixel_values within 1e-5 absolute (both sides resize with PIL and round the same way,
so we measure 0); grids and smart_resize sizes exact.

The reference guesses the channel axis of a numpy image: an (H, W, 3) image with H = 1 or 3
looks channels-first to it, so every reference call here states input_data_format="channels_last".
Images over the checkpoint's pixel budget always come out with ~12.8 M pixels (seconds in the
reference); the over-budget path is checked on big images with a lower max_pixels passed to both
sides, and smart_resize itself at the real budget.
"""

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

import qvl_minimal as qvl
from qvl_minimal import preprocess as P
from qvl_minimal.reference import _transformers, reference_image_processor, reference_video_patches

ATOL = 1e-5


@pytest.fixture(scope="module")
def ref():
    return reference_image_processor()


def check_against_reference(ref, image, **pixels):
    """Our preprocess_image vs the reference on one image: grid exact, values within ATOL."""
    ours, grid = qvl.preprocess_image(image, **pixels)
    out = ref(images=image, return_tensors="pt", input_data_format="channels_last", **pixels)
    assert torch.equal(grid, out["image_grid_thw"]), (grid, out["image_grid_thw"])
    assert ours.dtype == torch.float32 and grid.dtype == torch.int64 and ours.shape[1] == 1176
    assert (ours - out["pixel_values"]).abs().max().item() <= ATOL
    return grid


def random_image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_smart_resize_matches_reference_exactly():
    ref_smart_resize = _transformers().models.qwen2_vl.image_processing_qwen2_vl.smart_resize
    rnd = random.Random(0)
    sizes = [(h, w) for h in range(1, 90) for w in range(1, 90, 7)]  # tiny: the min_pixels branch
    sizes += [(rnd.randint(1, 40000), rnd.randint(1, 40000)) for _ in range(3000)]  # any, up to huge
    sizes += [(h, w) for h in (3584, 3598, 3599, 3612) for w in (3584, 3598, 3599, 3612)]  # budget edge
    sizes += [(14, 14), (42, 42), (70, 70), (98, 98), (28, 5600), (5600, 28), (10, 2000), (30000, 150)]
    n = 0
    for h, w in sizes:
        for lo, hi in [(3136, 12845056), (56 * 56, 28 * 28 * 1280), (100352, 602112)]:
            try:
                expected = ref_smart_resize(h, w, factor=28, min_pixels=lo, max_pixels=hi)
            except ValueError:
                with pytest.raises(ValueError, match="over the limit 200:1"):
                    P.smart_resize(h, w, min_pixels=lo, max_pixels=hi)
                continue
            assert P.smart_resize(h, w, min_pixels=lo, max_pixels=hi) == expected, (h, w, lo, hi)
            n += 1
    assert n > 8000
    assert qvl.smart_resize(600, 512) == (588, 504)  # defaults are the checkpoint's


def test_photo(ref, photo):
    grid = check_against_reference(ref, photo)
    assert grid.tolist() == [[1, 42, 36]] and grid.prod().item() // 4 == 378  # appendix A.4


@pytest.mark.parametrize("height,width", [
    (1, 1), (5, 4), (13, 27), (3, 50), (1, 150),  # tiny (under 28 px): grown to >= 3136 px
    (2, 400), (400, 2), (28, 5600), (10, 1999), (1999, 10),  # 200:1 and just under
    (300, 500),  # grid (22, 36): merged 11 x 18, not a multiple of 4
    (224, 224), (112, 448), (448, 336),  # merged grids that are multiples of 4
    (57, 97), (333, 129), (70, 70), (42, 98),  # odd sizes, round-half-to-even cases
])
def test_random_images(ref, height, width):
    check_against_reference(ref, random_image(height, width, seed=height * 7 + width))


@pytest.mark.parametrize("height,width,pixels", [
    (3000, 2000, dict(max_pixels=200_000)),  # over budget: shrunk with floor
    (2000, 3001, dict(max_pixels=28 * 28 * 64)),
    (100, 80, dict(min_pixels=50_000)),  # under a raised minimum: grown with ceil
])
def test_pixel_bounds(ref, height, width, pixels):
    grid = check_against_reference(ref, random_image(height, width), **pixels)
    n_pixels = grid.prod().item() * 14 * 14
    assert pixels.get("min_pixels", 0) <= n_pixels <= pixels.get("max_pixels", math.inf)


def test_elongated_image_can_exceed_the_budget(ref):
    # 4000 x 21 shrunk by beta = 0.92 gives a 22.9 px wide side: floor -> 0, clamped up to 28, so the
    # result (4340 x 28 = 121520 px) is over max_pixels. The reference does the same.
    grid = check_against_reference(ref, random_image(4000, 21), max_pixels=100_000)
    assert grid.tolist() == [[1, 310, 2]] and grid.prod().item() * 14 * 14 == 121520


def test_over_budget_at_checkpoint_settings_is_cheap_in_smart_resize():
    assert P.smart_resize(8000, 6000) == (4116, 3080)  # 2 * 8000 / sqrt(48e6 / 12845056) = ...
    h, w = P.smart_resize(8000, 6000)
    assert h * w <= P.MAX_PIXELS and h % 28 == 0 and w % 28 == 0
    assert (h // 28 + 1) * 28 * (w // 28 + 1) * 28 > P.MAX_PIXELS  # one more unit each side would not fit


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "I;16", "1", "CMYK", "I", "F"])
def test_pil_modes(ref, photo, mode):
    small = photo.resize((100, 117))
    if mode == "P":
        image = small.quantize(colors=16)
    elif mode in ("RGBA", "LA"):
        image = small.convert(mode)
        image.putalpha(Image.fromarray(np.random.default_rng(1).integers(0, 256, (117, 100), dtype=np.uint8)))
    elif mode == "I;16":
        image = Image.fromarray((np.asarray(small.convert("L")).astype(np.uint16) * 3))  # values up to 765
        assert image.mode == "I;16"
    else:
        image = small.convert(mode)
    check_against_reference(ref, image)


def test_numpy_input(ref):
    array = np.random.default_rng(2).integers(0, 256, (71, 130, 3), dtype=np.uint8)
    check_against_reference(ref, array)


def test_rgba_paste_on_white():
    rgba = np.zeros((30, 40, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red everywhere, but the left half fully transparent
    rgba[:, 20:, 3] = 255
    image = Image.fromarray(rgba)
    white, plain = np.asarray(P.paste_on_white(image)), np.asarray(P.to_rgb(image))
    assert (white[:, :20] == 255).all() and (white[:, 20:] == [200, 0, 0]).all()
    assert (plain == [200, 0, 0]).all()  # convert("RGB") keeps the hidden colour: the reference's way


def test_patch_order_equals_a_plain_numpy_reshape():
    frames = torch.randn(4, 3, 56, 84)  # 4 frames -> grid (2, 4, 6)
    ours, grid = P.patchify(frames)
    gt, gh, gw = grid[0].tolist()
    plain = frames.numpy().reshape(gt, 2, 3, gh // 2, 2, 14, gw // 2, 2, 14)
    plain = plain.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(gt * gh * gw, 1176)
    assert grid.tolist() == [[2, 4, 6]] and torch.equal(ours, torch.from_numpy(plain))


def test_odd_frame_count_repeats_last_frame():
    frames = [random_image(56, 84, seed=s) for s in range(3)]
    ours, grid = P.patchify(torch.stack([P.resize_normalize(f, 56, 84) for f in frames]))
    ref_values, ref_grid = reference_video_patches(frames, min_pixels=3136, max_pixels=12845056)
    assert torch.equal(grid, ref_grid) and grid.tolist() == [[2, 4, 6]]
    assert (ours - ref_values).abs().max().item() <= ATOL


def test_over_200_to_1_raises_clearly(ref):
    image = random_image(1, 201)
    with pytest.raises(ValueError, match=r"aspect ratio 201\.0:1 .* over the limit 200:1"):
        qvl.preprocess_image(image)
    with pytest.raises(ValueError, match="aspect ratio"):  # the reference refuses too
        ref(images=image, input_data_format="channels_last")
    with pytest.raises(ValueError, match="over the limit 200:1"):
        qvl.smart_resize(28, 5601)


@pytest.mark.parametrize("bad,error,message", [
    (np.zeros((30, 40, 3), dtype=np.float32), TypeError, "dtype float32; expected uint8"),
    (np.zeros((30, 40, 4), dtype=np.uint8), ValueError, r"shape \(30, 40, 4\).*a\[\.\.\., :3\]"),
    (np.zeros((3, 30, 40), dtype=np.uint8), ValueError, "channels-first"),
    (np.zeros((30, 40), dtype=np.uint8), ValueError, r"expected \(height, width, 3\)"),
    (np.zeros((0, 40, 3), dtype=np.uint8), ValueError, "empty"),
    (Image.new("RGB", (0, 5)), ValueError, "empty"),
    (torch.zeros(3, 30, 40), TypeError, r"permute\(1, 2, 0\)"),
    ("photo.jpg", TypeError, "got str"),
    (Image.new("La", (4, 4)), ValueError, "mode 'La'"),
])
def test_bad_images(bad, error, message):
    with pytest.raises(error, match=message):
        qvl.preprocess_image(bad)


# ---- video ----

def test_frame_sampling_rules():
    # (total frames, video fps, fps) -> (indices, sample fps), worked out by hand from qwen-vl-utils'
    # rule: n = total / video_fps * fps, clamped to [4, min(768, total)], rounded down to even.
    assert P.sample_frame_indices(90, 30.0) == ([0, 18, 36, 53, 71, 89], 2.0)  # 3 s: linspace 17.8 -> 18 ...
    assert P.sample_frame_indices(30, 30.0) == ([0, 10, 19, 29], 4.0)  # 1 s: 2 frames, raised to 4
    assert P.sample_frame_indices(3, 1.0) == ([0, 2], 2 / 3)  # 3 frames: at most 2 (even)
    assert P.sample_frame_indices(11, 10.0, fps=2.0)[0] == [0, 3, 7, 10]  # 2.2 -> 4; 3.33, 6.67 round
    indices, sample_fps = P.sample_frame_indices(1000, 1.0)  # 1000 s: 2000 wanted, capped at 768
    assert len(indices) == 768 and indices[-1] == 999 and sample_fps == 0.768
    assert P.sample_frame_indices(250, 25.0, fps=1.0)[0] == [0, 28, 55, 83, 111, 138, 166, 194, 221, 249]
    assert P.frame_pixel_budget(300) == 768 * 28 * 28 and P.frame_pixel_budget(768) == 235200.0
    assert P.frame_pixel_budget(768, max_pixels=200_000) == 200_000


def test_video_matches_reference_on_sampled_frames():
    video = np.random.default_rng(3).integers(0, 256, (90, 60, 80, 3), dtype=np.uint8)  # 3 s at 30 fps
    values, grid, second_per_grid_ts = qvl.preprocess_video(video, video_fps=30.0)
    picked = [Image.fromarray(video[i]) for i in [0, 18, 36, 53, 71, 89]]
    ref_values, ref_grid = reference_video_patches(picked, P.VIDEO_MIN_PIXELS, P.VIDEO_MAX_PIXELS)
    assert torch.equal(grid, ref_grid) and grid.tolist() == [[3, 20, 28]]  # 60 x 80 grown to 280 x 392
    assert (values - ref_values).abs().max().item() <= ATOL
    assert second_per_grid_ts.dtype == torch.float32 and second_per_grid_ts.tolist() == [1.0]


def test_video_list_of_frames_and_clamped_rate():
    frames = [random_image(40, 50, seed=s) for s in range(30)]  # 1 s at 30 fps -> 4 frames at 4 fps
    values, grid, second_per_grid_ts = qvl.preprocess_video(frames, video_fps=30.0, max_pixels=28 * 28 * 16)
    ref_values, ref_grid = reference_video_patches([frames[i] for i in [0, 10, 19, 29]], P.VIDEO_MIN_PIXELS,
                                                   P.frame_pixel_budget(4, max_pixels=28 * 28 * 16))
    assert torch.equal(grid, ref_grid) and (values - ref_values).abs().max().item() <= ATOL
    assert grid[0, 0].item() == 2 and second_per_grid_ts.tolist() == [0.5]  # 2 frames at 4 fps = 0.5 s


@pytest.mark.parametrize("frames,video_fps,error,message", [
    ([Image.new("RGB", (30, 30))], 30.0, ValueError, "at least 2 frames"),
    ([Image.new("RGB", (30, 30)), Image.new("RGB", (31, 30))], 30.0, ValueError, "one size"),
    ([], 30.0, TypeError, "non-empty list"),
    (np.zeros((8, 30, 30), dtype=np.uint8), 30.0, ValueError, r"\(T, height, width, 3\)"),
    (np.zeros((8, 30, 30, 3), dtype=np.uint8), 0.0, ValueError, "positive"),
    (np.zeros((8, 30, 30, 3), dtype=np.float64), 30.0, TypeError, "uint8"),
])
def test_bad_videos(frames, video_fps, error, message):
    with pytest.raises(error, match=message):
        qvl.preprocess_video(frames, video_fps)
