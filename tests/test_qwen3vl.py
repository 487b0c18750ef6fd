"""Qwen3-VL (qvl_minimal.qwen3vl) against transformers 4.57.6's Qwen3VLForConditionalGeneration.

Tiny random configs built with the reference's config class (our config -> Qwen3VLConfig(**to_dict())),
covering several DeepStack layer choices (none, one, two, three out of order), MQA, GQA and MHA,
tied and untied heads, head_dim set apart from hidden_size / heads, a position table smaller
and larger than the grids. The reference gets seeded random weights; ours gets the same tensors.
Logits must agree to float32 rounding: max |ours - ref| / max |ref| < 1e-5. A small vocabulary
(512, special ids 500..505) keeps every config at a few milliseconds.
"""

import pytest
import torch
from model_helpers import left_padded
from test_generate import assert_same_greedy

from qvl_minimal.qwen3vl import Qwen3TextConfig, Qwen3VisionConfig, Qwen3VL, Qwen3VLConfig
from qvl_minimal.qwen3vl.positions import get_rope_index
from qvl_minimal.qwen3vl.reference import build_reference, reference_state_dict
from qvl_minimal.qwen3vl.text import interleaved_mrope_cos_sin
from qvl_minimal.qwen3vl.vision import position_embeddings
from qvl_minimal.reference import compare
from qvl_minimal.safetensors_io import CheckpointError
from qvl_minimal.weights import load_pretrained

TOL = 1e-5  # float32 relative error of every logits comparison
IDS = dict(image_token_id=500, video_token_id=501, vision_start_token_id=502, vision_end_token_id=503,
           bos_token_id=504, eos_token_id=505)


def tiny(deepstack, kv_heads, tied, head_dim=16, mrope=(2, 3, 3), table=64):
    return Qwen3VLConfig(
        vision_config=Qwen3VisionConfig(depth=3, hidden_size=32, intermediate_size=48, num_heads=2,
                                        out_hidden_size=48, num_position_embeddings=table,
                                        deepstack_visual_indexes=deepstack),
        text_config=Qwen3TextConfig(vocab_size=512, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
                                    num_attention_heads=4, num_key_value_heads=kv_heads, head_dim=head_dim,
                                    mrope_section=mrope, tie_word_embeddings=tied),
        **IDS)


CONFIGS = {
    "deepstack_0_2-gqa-untied": tiny((0, 2), kv_heads=2, tied=False),
    "no_deepstack-mqa-tied": tiny((), kv_heads=1, tied=True, table=2304),
    "deepstack_1-mqa-untied": tiny((1,), kv_heads=1, tied=False, head_dim=24, mrope=(4, 4, 4), table=2304),
    "deepstack_2_1_0-mha-tied": tiny((2, 1, 0), kv_heads=4, tied=True, table=16),
}


def sample(cfg, *parts, seed=0) -> dict:
    """One prompt: an int n = n random text ids; ("image", (1, h, w)); ("video", (T, h, w)) laid out
    as the reference's processor does: per time step a timestamp (3 text ids standing for
    "<0.5 seconds>"), <|vision_start|>, h*w/4 <|video_pad|>, <|vision_end|>."""
    gen = torch.Generator().manual_seed(seed)
    text = lambda n: torch.randint(0, 490, (n,), generator=gen).tolist()  # noqa: E731 (no special ids)
    ids, pixels, grids = [], {"image": [], "video": []}, {"image": [], "video": []}
    for part in parts:
        if isinstance(part, int):
            ids += text(part)
            continue
        kind, (t, h, w) = part
        token = cfg.image_token_id if kind == "image" else cfg.video_token_id
        frame = [cfg.vision_start_token_id] + [token] * (h * w // 4) + [cfg.vision_end_token_id]
        ids += frame if kind == "image" else sum((text(3) + frame for _ in range(t)), [])
        pixels[kind].append(torch.randn(t * h * w, cfg.vision_config.patch_dim, generator=gen))
        grids[kind].append([t, h, w])
    out = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    for kind, pixels_key, grid_key in (("image", "pixel_values", "image_grid_thw"),
                                       ("video", "pixel_values_videos", "video_grid_thw")):
        if pixels[kind]:
            out[pixels_key], out[grid_key] = torch.cat(pixels[kind]), torch.tensor(grids[kind])
    return out


CASES = {
    "text": lambda c: sample(c, 10),
    "one_image": lambda c: sample(c, 5, ("image", (1, 4, 6)), 4),
    "two_images": lambda c: sample(c, 3, ("image", (1, 4, 4)), 2, ("image", (1, 12, 10)), 3),
    "video_with_timestamps": lambda c: sample(c, 3, ("video", (3, 4, 6)), 4),
    "image_and_video": lambda c: sample(c, 2, ("video", (2, 4, 4)), 3, ("image", (1, 6, 4)), 2),
    "left_padded_batch": lambda c: left_padded(sample(c, 4, ("image", (1, 4, 4)), 3, seed=1),
                                               sample(c, 2, ("video", (2, 4, 6)), 9, seed=2), pad=c.bos_token_id),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory):
    """(config, ours, reference): the reference's random weights written by its save_pretrained, then
    read by our load_pretrained (which must see model_type "qwen3_vl" and build a Qwen3VL)."""
    cfg = CONFIGS[request.param]
    ref = build_reference(cfg)
    folder = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(folder)
    ours = load_pretrained(folder, dtype="float32", progress=False)
    assert type(ours) is Qwen3VL and ours.config == cfg
    return cfg, ours, ref


@pytest.mark.parametrize("case", list(CASES))
@torch.no_grad()
def test_logits_match_reference(pair, case):
    cfg, ours, ref = pair
    inputs = CASES[case](cfg)
    logits, ref_logits = ours(**inputs), ref(**inputs).logits  # (B, L, vocab)
    assert logits.shape == ref_logits.shape == (*inputs["input_ids"].shape, cfg.text_config.vocab_size)
    real = inputs["attention_mask"].bool()  # padded positions are garbage on both sides
    assert case != "left_padded_batch" or not real.all()
    compare(f"logits {case}", logits[real], ref_logits[real], TOL)


@pytest.mark.parametrize("case", ["video_with_timestamps", "left_padded_batch"])
@torch.no_grad()
def test_greedy_tokens_match_reference(pair, case):
    cfg, ours, ref = pair
    inputs = CASES[case](cfg)
    new = ours.generate(max_new_tokens=6, **inputs)
    eos = list(ours.generation_config.eos_token_id)
    ref_out = ref.generate(**inputs, do_sample=False, max_new_tokens=6, eos_token_id=eos,
                           pad_token_id=ours.generation_config.pad_token_id, output_logits=True,
                           return_dict_in_generate=True)
    assert_same_greedy(new, ref_out, inputs["input_ids"].shape[1])


# ----------------------------------------------------------------------------- the pieces, one by one
@torch.no_grad()
def test_vision_tower_and_deepstack_features_match_reference(pair):
    cfg, ours, ref = pair
    inputs = sample(cfg, 1, ("image", (1, 4, 6)), 1, ("image", (1, 12, 10)), 1)
    grid = inputs["image_grid_thw"]
    tokens, deepstack = ours.visual(inputs["pixel_values"], grid)
    ref_tokens, ref_deepstack = ref.model.visual(inputs["pixel_values"], grid_thw=grid)
    assert len(deepstack) == len(ref_deepstack) == len(cfg.vision_config.deepstack_visual_indexes)
    compare("visual tokens", tokens, ref_tokens, TOL)
    for i, (a, b) in enumerate(zip(deepstack, ref_deepstack)):
        compare(f"deepstack feature {i}", a, b, TOL)
    ours_pos = position_embeddings(ours.visual.pos_embed.weight, grid, 2)
    compare("interpolated position table", ours_pos, ref.model.visual.fast_pos_embed_interpolate(grid), 1e-6)


@pytest.mark.parametrize("case", ["video_with_timestamps", "image_and_video", "left_padded_batch"])
def test_position_ids_match_reference(pair, case):
    cfg, _, ref = pair
    inputs = CASES[case](cfg)
    grids = {k: inputs.get(k) for k in ("image_grid_thw", "video_grid_thw")}
    ours = get_rope_index(cfg, inputs["input_ids"], **grids, attention_mask=inputs["attention_mask"])
    theirs = ref.model.get_rope_index(inputs["input_ids"], **{k: None if v is None else v.clone()
                                                              for k, v in grids.items()},
                                      attention_mask=inputs["attention_mask"])
    real = inputs["attention_mask"].bool()
    compare("position ids", ours[0][:, real], theirs[0][:, real], 0)
    compare("deltas", ours[1], theirs[1], 0)


def test_interleaved_mrope_matches_reference(pair):
    cfg, _, ref = pair
    position_ids = torch.stack([torch.arange(7) * 5, torch.arange(7) % 3, 20 - torch.arange(7)])[:, None]  # (3, 1, 7)
    cos, sin = interleaved_mrope_cos_sin(position_ids, cfg.text_config)
    ref_cos, ref_sin = ref.model.language_model.rotary_emb(torch.zeros(1, dtype=torch.float32), position_ids)
    compare("cos", cos, ref_cos, 1e-6)
    compare("sin", sin, ref_sin, 1e-6)


def test_module_tree_is_the_checkpoint_key_layout(pair):
    cfg, ours, ref = pair
    keys = set(ours.state_dict())
    assert keys == set(reference_state_dict(ref, cfg))
    assert ("lm_head.weight" in keys) != cfg.text_config.tie_word_embeddings
    assert {k.split(".")[0] for k in keys} <= {"model", "lm_head"}
    assert any(k.startswith("model.visual.deepstack_merger_list.") for k in keys) == bool(
        cfg.vision_config.deepstack_visual_indexes)


def test_second_per_grid_ts_is_refused():
    cfg = CONFIGS["no_deepstack-mqa-tied"]
    inputs = sample(cfg, 2, ("video", (2, 4, 4)), 2)
    with pytest.raises(ValueError, match="timestamps|text"):
        Qwen3VL(cfg)(**inputs, second_per_grid_ts=torch.tensor([1.0]))


# ----------------------------------------------------------------------------- loading
def test_loaded_tensors_are_the_saved_ones(pair):
    cfg, ours, ref = pair
    theirs = reference_state_dict(ref, cfg)
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, theirs[name]), name


def test_load_pretrained_names_a_tensor_of_the_wrong_shape(tmp_path):
    from safetensors.torch import load_file, save_file

    cfg = CONFIGS["deepstack_1-mqa-untied"]
    build_reference(cfg).save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["model.visual.pos_embed.weight"] = tensors["model.visual.pos_embed.weight"][:100]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="pos_embed.weight.*shape"):
        load_pretrained(tmp_path, dtype="float32", progress=False)
    del tensors["model.visual.pos_embed.weight"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing"):
        load_pretrained(tmp_path, dtype="float32", progress=False)


# ----------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("size", [(300, 400), (37, 1000), (256, 256), (90, 1500), (1100, 700)])
def test_image_preprocessing_bit_identical_to_reference(size):
    """Patch 16, merge 2, mean/std 0.5: the reference's Qwen2VLImageProcessor as Qwen3-VL configures it.
    (1100, 700) with max_pixels 300000 takes smart_resize's shrinking branch, (37, 1000) its growing one."""
    import numpy as np
    from PIL import Image

    from qvl_minimal.qwen3vl.preprocess import preprocess_image
    from qvl_minimal.qwen3vl.reference import reference_image_processor

    image = Image.fromarray(np.random.default_rng(sum(size)).integers(0, 256, (*size, 3), dtype=np.uint8))
    limit = {"max_pixels": 300_000} if size == (1100, 700) else {}
    pixels, grid = preprocess_image(image, **limit)
    ref = reference_image_processor()(images=image, return_tensors="pt", **limit)
    assert pixels.shape[1] == 3 * 2 * 16 * 16 and (grid[0, 1:] % 2 == 0).all()
    assert torch.equal(grid, ref["image_grid_thw"]) and torch.equal(pixels, ref["pixel_values"])


def test_preprocessing_constants_equal_the_reference_video_processor_defaults():
    from qvl_minimal.qwen3vl.preprocess import MEAN, PATCH, STD
    from qvl_minimal.qwen3vl.reference import reference_video_processor_defaults

    ref = reference_video_processor_defaults()
    assert (ref["patch_size"], ref["merge_size"], ref["temporal_patch_size"]) == (PATCH, 2, 2)
    assert ref["image_mean"] == MEAN and ref["image_std"] == STD
    assert CONFIGS["no_deepstack-mqa-tied"].vision_config.patch_dim == 3 * 2 * PATCH**2
