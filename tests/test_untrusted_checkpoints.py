"""Checkpoints people have: transformers 4.52's names, a tied head stored anyway, a generation
config, a YaRN rope_scaling, float16. Each checkpoint here is a micro model (vocabulary 320,
width 32) written by safetensors' save_file, a few hundred kB."""

import json

import pytest
import torch
from safetensors.torch import save_file

import qvl_minimal as qvl
import qvl_minimal.model as model_module
from qvl_minimal.config import GenerationConfig, Qwen25VLConfig
from qvl_minimal.weights import CheckpointError, checkpoint_layout, load_pretrained

MICRO = Qwen25VLConfig.preset("tiny").replace(
    text_config={"vocab_size": 320, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1,
                 "num_attention_heads": 2, "num_key_value_heads": 1, "mrope_section": (2, 3, 3)},
    vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 48, "num_heads": 2, "out_hidden_size": 32,
                   "fullatt_block_indexes": (0,)})


def micro_tensors(tied: bool, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = qvl.Qwen25VL(MICRO.replace(text_config={"tie_word_embeddings": tied}))
    return {k: v.detach().clone().to(torch.bfloat16) for k, v in model.state_dict().items()}


def write_checkpoint(folder, tensors: dict, tied: bool, config_changes: dict | None = None):
    folder.mkdir(parents=True, exist_ok=True)
    config = MICRO.replace(text_config={"tie_word_embeddings": tied}).to_dict()
    (folder / "config.json").write_text(json.dumps({**config, **(config_changes or {})}))
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def assert_loaded(model, tensors):
    state = model.state_dict()
    for name, tensor in tensors.items():
        if name in state:
            assert torch.equal(state[name].to(torch.bfloat16), tensor), name


def test_transformers_452_layout_loads(tmp_path, capsys):
    tensors = micro_tensors(tied=False)
    renamed = {("model.language_model." + k[6:] if k.startswith("model.") else
                "model." + k if k.startswith("visual.") else k): v for k, v in tensors.items()}
    assert "model.language_model.embed_tokens.weight" in renamed and "model.visual.merger.mlp.0.weight" in renamed
    model = load_pretrained(write_checkpoint(tmp_path / "c", renamed, tied=False), dtype=torch.float32)
    assert_loaded(model, tensors)
    err = capsys.readouterr().err
    assert "checkpoint layout: transformers 4.52's layout (model.visual.*, model.language_model.*), renamed" in err
    hub = load_pretrained(write_checkpoint(tmp_path / "h", tensors, tied=False), dtype=torch.float32)
    assert_loaded(hub, tensors)
    assert "checkpoint layout: the hub's layout (visual.*, model.*, lm_head.weight)" in capsys.readouterr().err


def test_mixed_layouts_and_repeated_tensors_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match=r"c: the tensor names mix two layouts: 'model.visual.x' \(transformers"):
        checkpoint_layout(["model.visual.x", "visual.y", "lm_head.weight"], "c")
    tensors = micro_tensors(tied=False)
    tensors["model.language_model.norm.weight"] = tensors.pop("model.norm.weight")
    with pytest.raises(CheckpointError, match="mix two layouts"):
        load_pretrained(write_checkpoint(tmp_path / "m", tensors, tied=False), progress=False)


def test_tied_checkpoint_storing_an_equal_head_loads(tmp_path, capsys):
    tensors = micro_tensors(tied=True)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()  # what an untying writer saves
    model = load_pretrained(write_checkpoint(tmp_path / "t", tensors, tied=True), dtype=torch.float32)
    assert not hasattr(model, "lm_head")
    assert_loaded(model, tensors)
    assert "lm_head.weight is stored too and equals model.embed_tokens.weight: one table kept" in capsys.readouterr().err


def test_tied_checkpoint_storing_a_different_head_is_refused(tmp_path):
    tensors = micro_tensors(tied=True)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    tensors["lm_head.weight"][7, 3] += 1
    with pytest.raises(CheckpointError, match=r"model.safetensors: 'lm_head.weight' differs from 'model.embed_tokens"
                                              r".weight', but t/config.json says tie_word_embeddings: true .*set "
                                              r"\"tie_word_embeddings\": false in config.json"):
        load_pretrained(write_checkpoint(tmp_path / "t", tensors, tied=True), progress=False)
    # following the advice loads it, with its own head
    (tmp_path / "t" / "config.json").write_text(json.dumps(MICRO.to_dict()))
    model = load_pretrained(tmp_path / "t", dtype=torch.float32, progress=False)
    assert torch.equal(model.lm_head.weight.bfloat16(), tensors["lm_head.weight"])


def test_generation_config_is_read_and_generate_stops_on_every_eos(tmp_path, monkeypatch):
    released = {"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
                "repetition_penalty": 1.05, "temperature": 0.1, "top_p": 0.001, "top_k": 1}
    folder = write_checkpoint(tmp_path / "g", micro_tensors(tied=False), tied=False)
    (folder / "generation_config.json").write_text(json.dumps(released))
    model = load_pretrained(folder, dtype=torch.float32, progress=False)
    assert model.generation_config == GenerationConfig((151645, 151643), 151643, True, 0.1, 0.001, 1, 1.05)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 5}))
    assert load_pretrained(folder, progress=False).generation_config.eos_token_id == (5,)
    (folder / "generation_config.json").unlink()  # no file: the released eos list all the same
    assert load_pretrained(folder, progress=False).generation_config.eos_token_id == (151645, 151643)

    # generate: a row that emits <|endoftext|> stops (before, it went on while looking padded)
    model = qvl.Qwen25VL(qvl.Qwen25VLConfig.preset("tiny")).eval()
    forced = iter([11, 151643, 12, 13])
    monkeypatch.setattr(model_module, "next_token", lambda logits, *args: torch.tensor([next(forced)]))
    new = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4)
    assert new.tolist() == [[11, 151643]]


def test_yarn_rope_scaling_is_refused(tmp_path):
    raw = MICRO.to_dict()
    raw["rope_scaling"] = {"type": "yarn", "mrope_section": [2, 3, 3], "factor": 4.0,
                           "original_max_position_embeddings": 32768}
    with pytest.raises(ValueError, match="rope_scaling of type 'yarn' is not implemented here"):
        Qwen25VLConfig.from_dict(raw)
    raw["rope_scaling"] = {"rope_type": "default", "mrope_section": [2, 3, 3]}  # newer writers' M-RoPE
    assert Qwen25VLConfig.from_dict(raw).text_config.mrope_section == (2, 3, 3)


def test_float16_is_refused_with_the_reason(tmp_path):
    folder = write_checkpoint(tmp_path / "f", micro_tensors(tied=False), tied=False)
    with pytest.raises(ValueError, match=r"float16 is refused: the vision tower of the released 3B overflows it "
                                         r"\(block 31's MLP down projection reaches -inf; llama.cpp issue 17534\)"):
        load_pretrained(folder, dtype=torch.float16, progress=False)
    with pytest.warns(UserWarning, match="float16 was allowed"):
        model = load_pretrained(folder, dtype=torch.float16, progress=False, allow_float16=True)
    assert next(model.parameters()).dtype == torch.float16


def test_loader_and_describe_share_one_validation_boundary(tmp_path, monkeypatch):
    """load_pretrained and `describe` (cli_inputs.check_checkpoint) both run checkpoint_check's one
    function; a quantised (integer) tensor, silently converted to float before, is refused by it."""
    import qvl_minimal.checkpoint_check as checkpoint_check
    import qvl_minimal.weights as weights
    from qvl_minimal.cli_inputs import UserError, check_checkpoint

    tensors = micro_tensors(tied=False)
    tensors["model.norm.weight"] = tensors["model.norm.weight"].to(torch.int16)
    folder = write_checkpoint(tmp_path / "q", tensors, tied=False)
    message = "model.safetensors: tensor 'model.norm.weight' is stored as I16; this loader takes floating-point"
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(folder, dtype=torch.float32, progress=False)
    with pytest.raises(UserError, match=message):
        check_checkpoint(str(folder))
    calls = []

    def spy(path=None, tokenizer=True):
        calls.append(tokenizer)
        raise CheckpointError("spied")

    monkeypatch.setattr(checkpoint_check, "check_checkpoint_folder", spy)
    monkeypatch.setattr(weights, "check_checkpoint_folder", spy)
    with pytest.raises(CheckpointError, match="spied"):
        load_pretrained(folder)
    with pytest.raises(UserError, match="spied"):
        check_checkpoint(str(folder))
    assert calls == [False, True]  # the loader needs no tokenizer; describe checks it too
