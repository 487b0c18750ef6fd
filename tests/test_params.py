"""Parameter counts by formula vs the reference model (built on the meta device) and the published sizes;
vision FLOPs by formula vs torch's FLOP counter on the library's tower."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import qvl_minimal as qvl
from qvl_minimal.params import parameter_bytes, vision_flops
from qvl_minimal.vision import VisionTransformer
from qvl_minimal.reference import build_reference, to_checkpoint_keys

# Published sizes of the released checkpoints (the sums of their safetensors headers, as the author read
# them on the hub), not our own output. The 72B is left out: its vision intermediate_size (3420 assumed, the
# technical report's table says 3456) cannot be checked offline, and its count would only repeat our formula.
PUBLISHED = {  # name: (total, vision tower + merger)
    "3b": (3_754_622_976, 668_684_288),
    "7b": (8_292_166_656, 676_550_144),
}
PUBLISHED_3B = {
    "patch_embed": 1_505_280, "vision_block": 19_702_200, "vision_blocks": 630_470_400, "merger": 36_708_608,
    "embed_tokens": 311_164_928, "decoder_layer": 77_076_992, "decoder_layers": 2_774_771_712, "norm": 2_048,
    "lm_head": 0,
}

# component -> the checkpoint-key prefix of its parameters
PREFIXES = {
    "patch_embed": "visual.patch_embed.", "vision_block": "visual.blocks.0.", "vision_blocks": "visual.blocks.",
    "merger": "visual.merger.", "vision": "visual.", "embed_tokens": "model.embed_tokens.",
    "decoder_layer": "model.layers.0.", "decoder_layers": "model.layers.", "norm": "model.norm.",
    "lm_head": "lm_head.", "text": ("model.", "lm_head."), "total": "",
}


def reference_counts(config):
    """Sum of numel per component of transformers' model (tied weights counted once)."""
    model = build_reference(config, device="meta")
    numels = to_checkpoint_keys({n: p.numel() for n, p in model.named_parameters()},
                                config.text_config.tie_word_embeddings)
    return {part: sum(n for k, n in numels.items() if k.startswith(prefix)) for part, prefix in PREFIXES.items()}


@pytest.mark.parametrize("name", ["3b", "7b", "72b", "tiny"])
def test_formula_equals_reference_model(name):
    config = qvl.Qwen25VLConfig.preset(name)
    assert qvl.count_parameters(config) == reference_counts(config)


def test_formula_equals_reference_when_tiny_is_tied():
    config = qvl.Qwen25VLConfig.preset("tiny").replace(text_config={"tie_word_embeddings": True})
    counts = qvl.count_parameters(config)
    assert counts["lm_head"] == 0 and counts == reference_counts(config)


@pytest.mark.parametrize("name", ["3b", "7b"])
def test_totals_equal_published_sizes(name):
    counts = qvl.count_parameters(qvl.Qwen25VLConfig.preset(name))
    assert (counts["total"], counts["vision"]) == PUBLISHED[name]


def test_3b_breakdown_equals_published():
    counts = qvl.count_parameters(qvl.Qwen25VLConfig.preset("3b"))
    assert {k: counts[k] for k in PUBLISHED_3B} == PUBLISHED_3B


def test_memory():
    config = qvl.Qwen25VLConfig.preset("3b")
    assert parameter_bytes(config, "bfloat16") == 7_509_245_952  # published: the bf16 size of 3B
    assert parameter_bytes(config, "float32") == 2 * 7_509_245_952
    with pytest.raises(ValueError, match="choose one of"):
        parameter_bytes(config, "int3")


def counted_flops(vision_config, grid_thw):
    """FLOPs of the library's tower as torch's FlopCounterMode sees them, per aten op (on meta: no memory)."""
    with torch.device("meta"):
        tower = VisionTransformer(vision_config)
    n = int(torch.as_tensor(grid_thw).prod(-1).sum())
    with FlopCounterMode(display=False) as counter:
        tower(torch.empty(n, vision_config.patch_dim, device="meta"), grid_thw)
    return {str(op): flops for op, flops in counter.get_flop_counts()["Global"].items()}


GRIDS = {  # the photo, a side that is not a multiple of the window, a video with 2 time steps + an image
    "photo": [[1, 42, 36]], "odd": [[1, 22, 10]], "video+image": [[2, 16, 24], [1, 8, 8]],
}


@pytest.mark.parametrize("grid", GRIDS.values(), ids=GRIDS.keys())
@pytest.mark.parametrize("full", [(), (1,), (0, 1)], ids=["all-window", "mixed", "all-full"])
def test_vision_flops_equal_flop_counter(grid, full):
    """Per op: the patch embedding is the only mm, the linear layers + merger the addmm, attention the bmm."""
    config = qvl.Qwen25VLConfig.preset("3b").replace(vision_config={"depth": 2, "fullatt_block_indexes": full})
    total, parts = vision_flops(config, grid)
    counted = counted_flops(config.vision_config, grid)
    assert parts["patch_embed"] == counted["aten.mm"]
    assert parts["linear"] + parts["merger"] == counted["aten.addmm"]
    assert parts["window_attention"] + parts["full_attention"] == counted["aten.bmm"]
    assert (parts["window_attention"] == 0) == (len(full) == 2) and (parts["full_attention"] == 0) == (not full)
    assert total == sum(counted.values()) == sum(parts.values())


def test_vision_flops_whole_3b_tower_on_the_photo():
    """The one number the book uses: the 32-block 3B tower + merger on the photo, about 2.0 TFLOP."""
    config = qvl.Qwen25VLConfig.preset("3b")
    total, parts = vision_flops(config, [[1, 42, 36]])
    assert total == sum(counted_flops(config.vision_config, [[1, 42, 36]]).values())
    assert round(total / 1e12, 1) == 2.0 and round(parts["linear"] / 1e12, 2) == 1.91
