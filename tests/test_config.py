"""The config dataclasses, the presets, config.json reading, and the bridge to the reference."""

import json

import pytest
import torch

import qvl_minimal as qvl
from qvl_minimal.config import CONFIG_DIR
from qvl_minimal.reference import build_reference, compare, from_checkpoint_keys, reference_config, to_checkpoint_keys

REAL_3B = CONFIG_DIR / "qwen2.5-vl-3b-instruct.config.json"


def test_real_3b_config_equals_preset():
    assert qvl.Qwen25VLConfig.from_pretrained(REAL_3B) == qvl.Qwen25VLConfig.preset("3b")


def test_folder_path_is_accepted(tmp_path):
    (tmp_path / "config.json").write_text(REAL_3B.read_text())
    assert qvl.Qwen25VLConfig.from_pretrained(tmp_path) == qvl.Qwen25VLConfig.preset("3b")


def test_nested_form_written_by_newer_transformers(tmp_path):
    flat = json.loads(REAL_3B.read_text())
    text_keys = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "rms_norm_eps", "rope_theta", "max_position_embeddings", "rope_scaling"]
    nested = {k: v for k, v in flat.items() if k not in text_keys}
    nested["text_config"] = {k: flat[k] for k in text_keys}
    (tmp_path / "config.json").write_text(json.dumps(nested))
    assert qvl.Qwen25VLConfig.from_pretrained(tmp_path) == qvl.Qwen25VLConfig.preset("3b")


def test_round_trip_through_to_dict(tmp_path):
    for name in ["3b", "7b", "72b", "tiny"]:
        config = qvl.Qwen25VLConfig.preset(name)
        (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
        assert qvl.Qwen25VLConfig.from_pretrained(tmp_path) == config


def test_missing_vision_fields_take_released_values_not_class_defaults(tmp_path):
    flat = json.loads(REAL_3B.read_text())
    flat["vision_config"] = {}
    (tmp_path / "config.json").write_text(json.dumps(flat))
    vision = qvl.Qwen25VLConfig.from_pretrained(tmp_path).vision_config
    assert vision.hidden_size == 1280 and vision.tokens_per_second == 2 and vision.out_hidden_size == 2048


def test_another_model_is_refused(tmp_path):
    flat = json.loads(REAL_3B.read_text())
    flat["model_type"] = "qwen2_vl"
    (tmp_path / "config.json").write_text(json.dumps(flat))
    with pytest.raises(ValueError, match="model_type is 'qwen2_vl'"):
        qvl.Qwen25VLConfig.from_pretrained(tmp_path)


def test_missing_required_field_is_named(tmp_path):
    flat = json.loads(REAL_3B.read_text())
    del flat["num_key_value_heads"]
    (tmp_path / "config.json").write_text(json.dumps(flat))
    with pytest.raises(ValueError, match="num_key_value_heads"):
        qvl.Qwen25VLConfig.from_pretrained(tmp_path)


def _edited_3b(**changes) -> dict:
    flat = json.loads(REAL_3B.read_text())
    for key, value in changes.items():
        section, _, field = key.rpartition("__")
        (flat[section] if section else flat)[field] = value
    return flat


@pytest.mark.parametrize("content, message", [
    ([1, 2], "holds a JSON list, not an object"),
    ("{", "not JSON .*download it again"),
    (_edited_3b(hidden_size="2048"), 'hidden_size is "2048", it must be an integer >= 0'),
    (_edited_3b(num_hidden_layers=36.0), "num_hidden_layers is 36.0, it must be an integer"),
    (_edited_3b(rms_norm_eps="1e-6"), "rms_norm_eps is .*a finite number"),
    (_edited_3b(tie_word_embeddings="yes"), 'tie_word_embeddings is "yes", it must be true or false'),
    (_edited_3b(vision_config__fullatt_block_indexes="7,15"), "fullatt_block_indexes is .*a list of integers"),
    (_edited_3b(vision_config__depth=None), "vision_config: depth is null"),
    (_edited_3b(vision_config=[1]), "vision_config is a list, not an object"),
    (_edited_3b(rope_scaling="mrope"), "rope_scaling is a str, not an object"),
    (_edited_3b(image_token_id=-5), "image_token_id is -5"),
    (_edited_3b(num_attention_heads=0), "num_attention_heads is 0, it must be at least 1"),
    (_edited_3b(num_key_value_heads=3), "not a multiple of num_key_value_heads 3"),
    (_edited_3b(rope_scaling={"type": "mrope", "mrope_section": [16, 24]}), r"mrope_section \[16, 24\] must be 3"),
    (_edited_3b(hidden_act="gelu"), "only 'silu' is implemented"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None)
def test_config_of_the_wrong_shape_or_types_is_one_clear_error(tmp_path, content, message):
    (tmp_path / "config.json").write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=f"config.json: .*{message}"):
        qvl.Qwen25VLConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize("content, message", [
    ([151645], "holds a JSON list, not an object"),
    ({"pad_token_id": "x"}, 'pad_token_id is "x", it must be an integer >= 0'),
    ({"eos_token_id": []}, "eos_token_id .* must be a token id"),
    ({"eos_token_id": [151645, "x"]}, "eos_token_id .* must be a token id"),
    ({"temperature": "hot"}, "temperature is .*a finite number"),
    ({"top_p": 1.5}, r"top_p is 1.5, it must lie in \(0, 1\]"),
    ({"do_sample": "true"}, "do_sample is .*true or false"),
])
def test_generation_config_of_the_wrong_shape_or_types_is_one_clear_error(tmp_path, content, message):
    (tmp_path / "generation_config.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match=f"generation_config.json: .*{message}"):
        qvl.GenerationConfig.from_pretrained(tmp_path)


def test_missing_file_and_unknown_preset(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        qvl.Qwen25VLConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="3b"):
        qvl.Qwen25VLConfig.preset("13b")


def test_reference_config_carries_every_field():
    config = qvl.Qwen25VLConfig.preset("3b")
    hf = reference_config(config)
    assert hf.text_config.hidden_size == 2048 and hf.text_config.num_key_value_heads == 2
    assert hf.text_config.rope_scaling["mrope_section"] == [16, 24, 24]
    assert hf.vision_config.hidden_size == 1280 and hf.vision_config.out_hidden_size == 2048
    assert hf.vision_config.tokens_per_second == 2 and hf.vision_config.fullatt_block_indexes == [7, 15, 23, 31]
    assert hf.tie_word_embeddings is True


@pytest.mark.parametrize("name", ["tiny", "3b"])
def test_checkpoint_key_layout(name):
    config = qvl.Qwen25VLConfig.preset(name)
    ref = build_reference(config, device="meta")
    keys = to_checkpoint_keys(ref.state_dict(), config.text_config.tie_word_embeddings)
    assert all(k.startswith(("visual.", "model.", "lm_head.")) for k in keys)
    assert ("lm_head.weight" in keys) == (not config.text_config.tie_word_embeddings)
    assert "visual.merger.mlp.2.weight" in keys and "model.layers.0.self_attn.q_proj.bias" in keys
    if name == "3b":
        assert len(keys) == 824  # the tensor count of the released 3B checkpoint
    assert set(from_checkpoint_keys(keys)) <= set(ref.state_dict())


def test_random_reference_weights_are_seeded_and_nontrivial(tiny_config):
    a = build_reference(tiny_config, seed=3).state_dict()
    b = build_reference(tiny_config, seed=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    bias = a["model.visual.blocks.0.attn.qkv.bias"]
    norm = a["model.language_model.norm.weight"]
    assert bias.abs().min() > 0 and not torch.allclose(norm, torch.ones_like(norm))


def test_compare_reports_and_fails():
    x = torch.ones(4)
    assert compare("same", x, x.clone()).passed
    assert not compare("off", x * 1.01, x, tol=1e-5, check=False).passed
    with pytest.raises(AssertionError, match="FAIL"):
        compare("off", x * 1.01, x, tol=1e-5)
    with pytest.raises(AssertionError, match="shape"):
        compare("shape", x, torch.ones(5))
    assert not compare("ints", torch.tensor([1, 2]), torch.tensor([1, 3]), check=False).passed
