"""The vision tower against the reference (transformers 4.57.6), stage by stage, float32.

Tolerance: relative error (max |ours - ref| / max |ref|) < 1e-5 for floats; integer tensors
(window index, boundaries) must be equal. Each stage is compared on its own so that a failure
names it: patch embeddings, rotary angles (and the reference's permuted cos/sin), window index,
cu_window_seqlens, cu_seqlens, merger input, output.
"""

import re

import pytest
import torch
from einops import rearrange

import qvl_minimal as qvl
from qvl_minimal.reference import build_reference, build_reference_vision, compare, reference_state_dict
from qvl_minimal.vision import (
    VisionTransformer, full_cu_seqlens, patch_positions, varlen_attention, vision_rotary_angles, window_index,
)

TOL = 1e-5  # float32 relative error bound for every float comparison below
PHOTO_GRID = [[1, 42, 36]]  # grace_hopper.jpg after smart_resize: 588 x 504 px
GRIDS = {
    "one image": [[1, 16, 20]],
    "several images": [[1, 16, 16], [1, 10, 6], [1, 2, 2], [1, 22, 36]],  # 16x16: merged side a multiple of 4
    "videos t > 1": [[3, 10, 6], [2, 22, 36]],
}


def pair(config, seed=0, vision_only=False):
    """(our tower, the reference tower) with the reference's random weights in both."""
    if vision_only:  # the reference tower alone: cheap at the real width
        ref = build_reference_vision(config, seed)
        state = ref.state_dict()
    else:  # the full reference model; its "visual.*" weights under the checkpoint's key names
        full = build_reference(config, seed)
        ref = full.model.visual
        state = {k[len("visual."):]: v for k, v in reference_state_dict(full, config).items()
                 if k.startswith("visual.")}
    with torch.device("meta"):  # no memory, no init: the weights come from the reference
        ours = VisionTransformer(config.vision_config).eval()
    ours.load_state_dict(state, strict=True, assign=True)  # module names = checkpoint keys
    return ours, ref


def capture(module, inputs: dict, key=None):
    """Record the inputs of `module` (positional arg 0, or keyword `key`) on each call."""
    def hook(_, args, kwargs):
        inputs.setdefault(key or "x", []).append(kwargs[key] if key else args[0])
    return module.register_forward_pre_hook(hook, with_kwargs=True)


@torch.no_grad()
def check_tower(ours, ref, pixel_values, grid, label):
    """Compare every stage of the two towers on one input; each compare names its stage."""
    cfg, g = ours.config, torch.as_tensor(grid)
    compare(f"{label}: patch embeddings", ours.patch_embed(pixel_values), ref.patch_embed(pixel_values), TOL)
    compare(f"{label}: rotary angles", vision_rotary_angles(g, cfg.head_dim), ref.rot_pos_emb(g), TOL)
    index, cu_window = window_index(g, cfg)
    ref_index, ref_cu_raw = ref.get_window_index(g)
    compare(f"{label}: window index", index, ref_index)
    compare(f"{label}: cu_window_seqlens", cu_window, torch.unique_consecutive(torch.tensor(ref_cu_raw)))

    ref_in, our_in = {}, {}  # what the reference passes to its blocks and merger, and ours
    hooks = [capture(ref.blocks[i], ref_in, key) for i in (0, cfg.fullatt_block_indexes[0])
             for key in ("cu_seqlens", "position_embeddings")]
    hooks += [capture(ref.merger, ref_in), capture(ours.merger, our_in)]
    out_ref = ref(pixel_values, grid_thw=g)
    out = ours(pixel_values, g)
    for h in hooks:
        h.remove()
    cu_window_ref, cu_full_ref = ref_in["cu_seqlens"]
    compare(f"{label}: cu_window_seqlens as used", cu_window, cu_window_ref)
    compare(f"{label}: cu_seqlens", full_cu_seqlens(g), cu_full_ref)
    angles = rearrange(vision_rotary_angles(g, cfg.head_dim), "(u k) a -> u k a", k=4)[index]  # window order
    emb = torch.cat([rearrange(angles, "u k a -> (u k) a")] * 2, dim=-1)  # (N, head_dim)
    compare(f"{label}: cos in window order", emb.cos(), ref_in["position_embeddings"][0][0], TOL)
    compare(f"{label}: merger input", our_in["x"][0], ref_in["x"][0], TOL)
    compare(f"{label}: output", out, out_ref, TOL)
    assert out.shape == (pixel_values.shape[0] // 4, cfg.out_hidden_size)


@pytest.fixture(scope="module")
def tiny_pair(tiny_config):
    return pair(tiny_config, seed=1)  # depth 4, full attention at blocks 1 and 3, window 112


@pytest.mark.parametrize("name", GRIDS)
def test_tiny_tower_matches_reference(tiny_pair, name):
    grid = GRIDS[name]
    pixels = torch.randn(sum(t * h * w for t, h, w in grid), 1176)
    check_tower(*tiny_pair, pixels, grid, name)


def test_photo_matches_reference(tiny_pair, photo):
    pixel_values, grid = qvl.preprocess_image(photo)
    assert grid.tolist() == PHOTO_GRID and pixel_values.shape == (1512, 1176)
    check_tower(*tiny_pair, pixel_values, grid, "photo")


@pytest.mark.parametrize("window_size", [56, 224])
def test_other_window_sizes(tiny_config, window_size):
    config = tiny_config.replace(vision_config={"window_size": window_size})  # windows of 2 or 8 merge units
    ours, ref = pair(config, seed=2, vision_only=True)
    grid = [[1, 42, 36], [2, 16, 16], [1, 6, 10]]
    check_tower(ours, ref, torch.randn(1512 + 512 + 60, 1176), grid, f"window {window_size}")


def test_real_width_on_photo(tiny_config, photo):
    """1280 wide, 16 heads of 80, 3420 MLP, merger 5120 -> 2048; 2 blocks (window, then full)."""
    config = tiny_config.replace(vision_config={**qvl.VisionConfig().__dict__, "depth": 2,
                                                "fullatt_block_indexes": (1,)})
    ours, ref = pair(config, seed=3, vision_only=True)
    check_tower(ours, ref, qvl.preprocess_image(photo)[0], PHOTO_GRID, "3B width")


def test_window_boundaries_of_known_grid():
    """The worked example of appendix A.5: grid (1, 22, 36) -> 15 windows, these boundaries."""
    _, cu = window_index([[1, 22, 36]], qvl.VisionConfig())
    assert cu.tolist() == [0, 64, 128, 192, 256, 288, 352, 416, 480, 544, 576, 624, 672, 720, 768, 792]
    assert full_cu_seqlens([[2, 4, 6], [1, 2, 2]]).tolist() == [0, 24, 48, 52]
    assert patch_positions([[1, 2, 4]]).tolist() == [[0, 0], [0, 1], [1, 0], [1, 1],
                                                     [0, 2], [0, 3], [1, 2], [1, 3]]


def test_varlen_attention_equals_dense_block_mask():
    """Independent of the reference: batched varlen attention == one dense masked softmax."""
    cu = torch.tensor([0, 64, 128, 160, 224, 228, 292])  # equal and odd lengths mixed
    q, k, v = torch.randn(3, 292, 2, 8).unbind(0)
    seg = torch.repeat_interleave(torch.arange(len(cu) - 1), cu.diff())
    mask = seg[:, None] == seg[None, :]  # (N, N) block diagonal
    qh, kh, vh = (rearrange(x, "n h d -> h n d") for x in (q, k, v))
    weights = (qh @ kh.transpose(-1, -2) / 8**0.5).masked_fill(~mask, float("-inf")).softmax(-1)
    compare("varlen vs dense", varlen_attention(q, k, v, cu), rearrange(weights @ vh, "h n d -> n h d"), TOL)


@pytest.mark.parametrize("pixels, grid, error, words", [
    (torch.randn(100, 1176), [[1, 10, 12]], ValueError, "needs sum(t*h*w) = 120"),
    (torch.randn(99, 1176), [[1, 9, 11]], ValueError, "multiples of the merge size"),
    (torch.zeros(120, 1176, dtype=torch.uint8), [[1, 10, 12]], TypeError, "floating-point"),
    (torch.randn(120, 3, 392), [[1, 10, 12]], ValueError, "shape (num_patches, 1176)"),
    (torch.randn(120, 588), [[1, 10, 12]], ValueError, "shape (num_patches, 1176)"),
    (torch.randn(120, 1176), [1, 10, 12], ValueError, "shape (num_images, 3)"),
    (torch.randn(120, 1176), [[1.0, 10.0, 12.0]], TypeError, "integers"),
    (torch.randn(120, 1176), [[0, 10, 12]], ValueError, "positive"),
])
def test_bad_inputs_name_the_problem(tiny_config, pixels, grid, error, words):
    tower = VisionTransformer(tiny_config.vision_config)
    with pytest.raises(error, match=re.escape(words)):
        tower(pixels, grid)
