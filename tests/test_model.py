"""The whole model against transformers 4.57.6: logits, state-dict keys, M-RoPE, bad inputs.

Our model gets the reference's random weights (`load_state_dict(reference_state_dict(ref, cfg))`,
strict) and must give the same float32 logits: relative error < 1e-5 (max |ours - ref| / max |ref|).
Two configs: "tiny" (every mechanism, milliseconds) and "3b-wide" (the real 3B widths and
vocabulary, 2 decoder layers and 2 vision blocks, one of them full attention).
Generation and the KV cache: test_generate.py.
"""

import pytest
import torch
from model_helpers import left_padded, load_pair, sample, wide_config

import qvl_minimal as qvl
from qvl_minimal.layers import apply_rotary
from qvl_minimal.model import splice_visual_tokens
from qvl_minimal.reference import build_reference, compare, reference_mrope, reference_state_dict
from qvl_minimal.text import mrope_cos_sin

TOL = 1e-5  # float32 relative error, every logits comparison


@pytest.fixture(scope="module", params=["tiny", "3b-wide"])
def pair(request):
    cfg = qvl.Qwen25VLConfig.preset("tiny") if request.param == "tiny" else wide_config()
    return (cfg, *load_pair(cfg))


@pytest.fixture(scope="module")
def tiny(tiny_config):
    return (tiny_config, *load_pair(tiny_config))


CASES = {
    "text": lambda c: sample(c, 10),
    "image_mid_text": lambda c: sample(c, 5, ("image", (1, 4, 6)), 4),
    "two_images": lambda c: sample(c, 3, ("image", (1, 4, 4)), 2, ("image", (1, 6, 4)), 3),
    # 6 time steps x 2 x 2 merged tokens, 2 s per step (fps 1): time ids 0, 4, ..., 20 outrun h and w.
    # (Whole seconds only: for fractional ones 4.57.6 truncates to an integer, the library keeps the
    # original rule; tests/test_positions.py shows the difference.)
    "long_video": lambda c: sample(c, 3, ("video", (6, 4, 4), 2.0), 4),
    "image_and_video": lambda c: sample(c, 2, ("image", (1, 4, 4)), 3, ("video", (2, 4, 6), 1.0), 2),
    "left_padded_batch": lambda c: left_padded(sample(c, 4, ("image", (1, 4, 4)), 3, seed=1),
                                               sample(c, 2, ("image", (1, 6, 4)), 6, seed=2)),
}



# ----------------------------------------------------------------------------- logits
@pytest.mark.parametrize("case", list(CASES))
@torch.no_grad()
def test_logits_match_reference(pair, case):
    cfg, ours, ref = pair
    inputs = CASES[case](cfg)
    logits = ours(**inputs)  # (B, L, vocab)
    ref_logits = ref(**inputs).logits
    assert logits.shape == ref_logits.shape == (*inputs["input_ids"].shape, cfg.text_config.vocab_size)
    real = inputs["attention_mask"].bool()  # padded positions are garbage on both sides: compare the rest
    if case == "left_padded_batch":
        assert not real.all()
    compare(f"logits {case}", logits[real], ref_logits[real], TOL)


def test_state_dict_is_the_checkpoints(tiny):
    cfg, ours, ref = tiny
    assert sorted(ours.state_dict()) == sorted(reference_state_dict(ref, cfg))  # the same names
    assert "lm_head.weight" in ours.state_dict() and list(ours.buffers()) == []
    with torch.device("meta"):  # the real 3B: tied head, so no lm_head.weight; 824 tensors
        cfg3b = qvl.Qwen25VLConfig.preset("3b")
        keys = list(qvl.Qwen25VL(cfg3b).state_dict())
    assert sorted(keys) == sorted(reference_state_dict(build_reference(cfg3b, device="meta"), cfg3b))
    assert len(keys) == 824 and "lm_head.weight" not in keys


@torch.no_grad()
def test_mrope_matches_reference_rotation(tiny):
    """cos/sin picked per section (t, h, w) rotate q exactly like apply_multimodal_rotary_pos_emb."""
    cfg = wide_config()
    rotary, apply = reference_mrope(cfg)
    position_ids = torch.randint(0, 500, (3, 2, 7))  # three different ids per token
    q = torch.randn(2, 4, 7, cfg.text_config.head_dim)
    cos, sin = mrope_cos_sin(position_ids, cfg.text_config)  # (B, L, 128)
    ref_cos, ref_sin = rotary(q, position_ids)  # (3, B, L, 128)
    ref_q, _ = apply(q, q, ref_cos, ref_sin, list(cfg.text_config.mrope_section))
    compare("M-RoPE rotated q", apply_rotary(q, cos[:, None], sin[:, None]), ref_q, TOL)


# ----------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_clear_errors(tiny):
    cfg, ours, _ = tiny
    good = sample(cfg, 3, ("image", (1, 4, 4)), 2)  # 4 <|image_pad|> tokens
    ids, pv, grid = good["input_ids"], good["pixel_values"], good["image_grid_thw"]

    def raises(match, *args, call=ours, **kwargs):
        with pytest.raises(ValueError, match=match):
            call(*args, **kwargs)

    short = torch.cat([ids[:, :4], ids[:, 5:]], dim=1)  # one placeholder removed: 3 tokens, 4 features
    raises(r"3 placeholder tokens .* 4 features", short, pixel_values=pv, image_grid_thw=grid)
    raises(r"3 placeholder tokens .* 4 features", torch.zeros(1, 3, 2), short, torch.zeros(4, 2),
           cfg.image_token_id, call=splice_visual_tokens)
    raises(r"\[0, 151936\).*151936", torch.tensor([[1, 151936]]))
    raises(r"\[0, 151936\).*-1", torch.tensor([[-1, 5]]))
    raises("integer tensor", torch.tensor([[1.0, 2.0]]))
    raises("batch axis", torch.tensor([1, 2, 3]))
    raises("image_grid_thw given without pixel_values", ids, image_grid_thw=grid)
    raises("pixel_values given without image_grid_thw", ids, pixel_values=pv)
    raises("video_grid_thw given without pixel_values_videos", ids, pixel_values=pv, image_grid_thw=grid,
           video_grid_thw=grid)
    raises(r"4 <\|image_pad\|> tokens but no image pixels", ids)
    raises("second_per_grid_ts given without a video", ids, pixel_values=pv, image_grid_thw=grid,
           second_per_grid_ts=torch.tensor([1.0]))
    raises("attention_mask shape", ids, torch.ones(1, 3), pixel_values=pv, image_grid_thw=grid)
    raises("only 0", ids, torch.full_like(ids, 2), pixel_values=pv, image_grid_thw=grid)
    right = torch.ones(2, 4, dtype=torch.long)
    right[0, -1] = 0
    raises("LEFT", torch.ones(2, 4, dtype=torch.long), 3, right, call=ours.generate)
    raises("temperature", ids[:, :3], 3, temperature=-1.0, call=ours.generate)
    raises("max_new_tokens", ids[:, :3], 0, call=ours.generate)
