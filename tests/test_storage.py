"""bfloat16 storage (storage.py): weights in bfloat16, computed in float32 one module at a time.

It must equal, bit for bit, the float32 model run on the bfloat16-rounded weights, and agree with
the float32 model itself to the rounding of the weights."""

import copy
import sys

import pytest
import torch

import qvl_minimal as qvl
from qvl_minimal.standin import standin_checkpoint
from qvl_minimal.storage import choose_storage, free_memory, storage_dtype, store_in_bfloat16, weights_fit

sys.path.insert(0, __import__("os").path.dirname(__file__))
from model_helpers import load_pair, sample  # noqa: E402


@pytest.fixture(scope="module")
def trio():
    """(float32 model, the same in bfloat16 storage, float32 on the bfloat16-rounded weights), tiny preset."""
    cfg = qvl.Qwen25VLConfig.preset("tiny")
    ours, _ = load_pair(cfg)
    stored = store_in_bfloat16(copy.deepcopy(ours))
    rounded = copy.deepcopy(ours)
    with torch.no_grad():
        for name, p in rounded.named_parameters():
            if storage_dtype(name, p.shape, torch.float32, "bfloat16") == torch.bfloat16:
                p.copy_(p.bfloat16().float())
    return cfg, ours, stored, rounded


def inputs(cfg):
    return sample(cfg, 5, ("image", (1, 8, 12)), 7, ("video", (2, 4, 4), 1.0), 3)


def test_weights_are_stored_in_bfloat16(trio):
    cfg, ours, stored, _ = trio
    kinds = {name: p.dtype for name, p in stored.named_parameters()}
    assert kinds["visual.patch_embed.proj.weight"] == torch.float32  # the pixels keep its dtype
    assert kinds["model.embed_tokens.weight"] == kinds["lm_head.weight"] == torch.bfloat16
    assert kinds["visual.blocks.0.attn.qkv.weight"] == kinds["model.layers.0.mlp.down_proj.weight"] == torch.bfloat16
    assert kinds["model.layers.0.input_layernorm.weight"] == kinds["visual.blocks.0.attn.qkv.bias"] == torch.float32
    size = lambda m: sum(p.numel() * p.element_size() for p in m.parameters())  # noqa: E731
    assert size(stored) < 0.55 * size(ours)


def test_exactly_the_float32_model_on_rounded_weights(trio):
    cfg, ours, stored, rounded = trio
    batch = inputs(cfg)
    with torch.no_grad():
        a, b = stored(**batch), rounded(**batch)
    assert a.dtype == torch.float32 and torch.equal(a, b)
    assert all(p.dtype in (torch.bfloat16, torch.float32) for p in stored.parameters())
    assert next(stored.model.layers[0].mlp.parameters()).dtype == torch.bfloat16  # put back after the forward
    assert torch.equal(stored.generate(max_new_tokens=6, **batch), rounded.generate(max_new_tokens=6, **batch))


def test_upcasts_reuse_one_buffer(trio):
    """Every module's float32 copies live in the model's one scratch buffer, sized for the largest module."""
    cfg, ours, stored, _ = trio
    buffer = stored._scratch.buffer
    largest = max(sum(p.numel() for p in m.parameters(recurse=False) if p.dtype == torch.bfloat16)
                  for m in stored.modules())
    assert buffer.numel() == largest == cfg.text_config.vocab_size * cfg.text_config.hidden_size  # the head
    seen = []
    hooks = [module.register_forward_pre_hook(lambda m, args: seen.append((m.weight.dtype, m.weight.data_ptr())))
             for module in (stored.visual.blocks[0].attn.qkv, stored.model.layers[0].mlp.down_proj)]
    with torch.no_grad():
        stored(**inputs(cfg))
    for hook in hooks:  # the model is the module's shared fixture
        hook.remove()
    begin, end = buffer.data_ptr(), buffer.data_ptr() + buffer.nbytes
    assert seen and all(dtype == torch.float32 and begin <= ptr < end for dtype, ptr in seen)


def test_agrees_with_float32_to_the_rounding_of_the_weights(trio):
    cfg, ours, stored, _ = trio
    batch = inputs(cfg)
    with torch.no_grad():
        a, b = stored(**batch), ours(**batch)
    rel = ((a - b).abs().max() / b.abs().max()).item()
    assert 0 < rel < 3e-2, rel  # bfloat16 keeps 8 bits: each weight moves by up to 2^-9 relative


def test_load_pretrained_storage():
    folder = standin_checkpoint("small")
    plain = qvl.load_pretrained(folder, dtype="float32", progress=False)
    stored = qvl.load_pretrained(folder, dtype="float32", progress=False, storage="bfloat16")
    assert stored.model.embed_tokens.weight.dtype == torch.bfloat16 and getattr(stored, "storage", None) == "bfloat16"
    batch = inputs(plain.config)
    with torch.no_grad():  # the checkpoint is bfloat16 on disk: float32 holds the same rounded values
        assert torch.equal(stored(**batch), plain(**batch))


def test_choose_storage():
    cfg = qvl.Qwen25VLConfig.preset("3b")  # 15.0 GB in float32
    choice, why = choose_storage(cfg, torch.float32, available=12_000_000_000)
    assert choice == "bfloat16" and "15.0 GB" in why and "12.0 GB" in why
    assert choose_storage(cfg, torch.float32, available=64_000_000_000)[0] is None
    assert choose_storage(cfg, torch.bfloat16, available=1)[0] is None  # already bfloat16
    assert choose_storage(cfg, torch.float32, "bfloat16", available=10**12) == ("bfloat16", "as asked")
    with pytest.raises(ValueError, match="choose 'bfloat16'"):
        choose_storage(cfg, torch.float32, "int8")


class Interrupt(BaseException):
    """Stands for Ctrl-C: like KeyboardInterrupt, it is not an Exception, so torch's always_call hooks miss it."""


@pytest.mark.parametrize("where", ["visual.blocks.0.attn.qkv", "visual.merger.mlp.2", "model.layers.0.self_attn.q_proj",
                                   "model.layers.LAST.mlp.down_proj"])
@pytest.mark.parametrize("kind", [RuntimeError, Interrupt])
def test_an_interrupted_forward_changes_nothing(trio, where, kind):
    """An exception (or Ctrl-C) inside one module's forward, in the first or the last layer: every later
    forward computes exactly what it computed before, and every matrix is back in bfloat16."""
    cfg, ours, stored, _ = trio
    batch = inputs(cfg)
    with torch.no_grad():
        before = stored(**batch)
        module = stored.get_submodule(where.replace("LAST", str(cfg.text_config.num_hidden_layers - 1)))

        def fail(m, args):  # runs after the storage pre-hook has swapped in the float32 copies
            raise kind("interrupted")

        hook = module.register_forward_pre_hook(fail)
        try:
            with pytest.raises(kind):
                stored(**batch)
        finally:
            hook.remove()
        stored.visual.blocks[0].mlp.down_proj(torch.randn(3, cfg.vision_config.intermediate_size))  # overwrites the buffer
        after = stored(**batch)
    assert torch.equal(before, after)
    assert module.weight.dtype == torch.bfloat16
    assert all(p.dtype in (torch.bfloat16, torch.float32) for p in stored.parameters())
    assert {n for n, p in stored.named_parameters() if p.dtype == torch.bfloat16} == \
        {n for n, p in stored.named_parameters() if storage_dtype(n, p.shape, torch.float32, "bfloat16") == torch.bfloat16}


def test_storage_follows_the_device():
    """The scratch buffer is made on the weights' device, and the memory rule asks that device."""
    cfg = qvl.Qwen25VLConfig.preset("tiny")
    with torch.device("meta"):
        model = qvl.Qwen25VL(cfg)
    store_in_bfloat16(model)
    assert model._scratch.buffer.device.type == "meta"
    fit, why = weights_fit(qvl.Qwen25VLConfig.preset("3b"), torch.float32, device="meta")
    assert fit and "meta" in why  # shapes only: no memory to run out of
    assert choose_storage(qvl.Qwen25VLConfig.preset("3b"), torch.float32, device="meta")[0] is None
    cfg3b = qvl.Qwen25VLConfig.preset("3b")
    assert choose_storage(cfg3b, torch.float32, available=12_000_000_000, device="cuda")[0] == "bfloat16"
    assert "on cuda" in weights_fit(cfg3b, torch.float32, available=64_000_000_000, device="cuda")[1]
    with pytest.raises(ValueError, match="storage='bfloat16'"):
        free_memory("mps")


def test_storage_variable_is_named(monkeypatch):
    monkeypatch.setenv("QVL_STORAGE", "bf16")
    with pytest.raises(ValueError, match=r"\$QVL_STORAGE = 'bf16'.*'bfloat16'"):
        choose_storage(qvl.Qwen25VLConfig.preset("tiny"), torch.float32)
