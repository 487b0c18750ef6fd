"""The checkpoint loader on checkpoints written by the reference's own save_pretrained.

The stand-ins have the hub's layout and key names (config.json, sharded safetensors with an
index, bfloat16), so these tests exercise the same code path as the real 3B download.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import qvl_minimal as qvl
from qvl_minimal.reference import compare
from qvl_minimal.standin import standin_checkpoint, standin_config, write_standin_checkpoint
from qvl_minimal.weights import CheckpointError, find_checkpoint, load_pretrained

# a short prompt with one image: <|vision_start|> 4 x <|image_pad|> <|vision_end|> and some text
IDS = torch.tensor([[151644, 872, 198, 151652] + [151655] * 4 + [151653, 3838, 374, 419, 30, 151645, 198]])
GRID = torch.tensor([[1, 4, 4]])


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A small stand-in split into several shards (like the real two-shard 3B download)."""
    folder = tmp_path_factory.mktemp("ckpt") / "small"
    write_standin_checkpoint(folder, standin_config("small"), seed=1, max_shard_size="8MB")
    return folder


def copy_of(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / "copy")


def reference_from(folder, dtype):
    import transformers

    return transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=dtype).eval()


def test_the_stand_in_has_the_hub_layout(sharded):
    files = sorted(p.name for p in sharded.iterdir())
    shards = [f for f in files if f.startswith("model-")]
    assert len(shards) >= 2 and "model.safetensors.index.json" in files and "config.json" in files
    assert "tokenizer.json" in files
    keys = json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    assert all(k.startswith(("visual.", "model.", "lm_head.")) for k in keys)  # checkpoint keys, not 4.52+'s


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logits_and_greedy_tokens_equal_the_reference(sharded, dtype):
    torch.manual_seed(0)
    pixels = torch.randn(16, 1176)
    ours = load_pretrained(sharded, dtype=dtype, progress=False)
    ref = reference_from(sharded, dtype)
    assert next(ours.parameters()).dtype == dtype
    with torch.no_grad():
        a = ours(IDS, pixel_values=pixels.to(dtype), image_grid_thw=GRID).float()
        b = ref(input_ids=IDS, pixel_values=pixels.to(dtype), image_grid_thw=GRID).logits.float()
    # float32: the same arithmetic up to rounding. bfloat16: 8 bits of mantissa, and the two
    # implementations round at different places, so a looser bound and top-1 agreement.
    compare(f"logits {dtype}", a, b, tol=1e-5 if dtype == torch.float32 else 3e-2)
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    new = ours.generate(IDS, 12, pixel_values=pixels.to(dtype), image_grid_thw=GRID)
    ref_new = ref.generate(input_ids=IDS, pixel_values=pixels.to(dtype), image_grid_thw=GRID, max_new_tokens=12,
                           do_sample=False, eos_token_id=None)[:, IDS.shape[1]:]
    assert torch.equal(new, ref_new[:, : new.shape[1]])


def test_default_dtype_follows_the_rule(sharded, monkeypatch):
    """dtype=None: choose_dtype's choice for the CPU (machine-dependent), or $QVL_DTYPE when set."""
    from qvl_minimal.dtypes import choose_dtype

    monkeypatch.delenv("QVL_DTYPE", raising=False)
    assert next(load_pretrained(sharded, progress=False).parameters()).dtype == choose_dtype("cpu")[0]
    monkeypatch.setenv("QVL_DTYPE", "float32")
    assert next(load_pretrained(sharded, progress=False).parameters()).dtype == torch.float32


def test_hub_cache_layout_and_environment_variable(sharded, tmp_path, monkeypatch):
    snapshot = tmp_path / "models--Qwen--Qwen2.5-VL-3B-Instruct" / "snapshots" / "0123abc"
    shutil.copytree(sharded, snapshot)
    assert find_checkpoint(snapshot.parent.parent) == snapshot  # the repo folder
    assert find_checkpoint(snapshot) == snapshot
    monkeypatch.setenv("QVL_CHECKPOINT", str(snapshot))
    assert find_checkpoint() == snapshot
    monkeypatch.delenv("QVL_CHECKPOINT")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert find_checkpoint() == snapshot  # the default hub cache


def test_missing_checkpoint_says_how_to_download(tmp_path, monkeypatch):
    monkeypatch.delenv("QVL_CHECKPOINT", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="hf download Qwen/Qwen2.5-VL-3B-Instruct"):
        find_checkpoint()


def test_deleted_shard(sharded, tmp_path):
    folder = copy_of(sharded, tmp_path)
    (folder / "model-00002-of-0000{}.safetensors".format(len(list(folder.glob("model-*"))))).unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-.*missing"):
        load_pretrained(folder, progress=False)


def test_truncated_shard(sharded, tmp_path):
    folder = copy_of(sharded, tmp_path)
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match=f"{shard.name}: truncated"):
        load_pretrained(folder, progress=False)


def _rename_tensor(folder, old, new):
    from safetensors.torch import load_file, save_file

    index_file = folder / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shard = folder / index["weight_map"].pop(old)
    tensors = load_file(shard)
    tensors[new] = tensors.pop(old)
    save_file(tensors, shard, metadata={"format": "pt"})
    index["weight_map"][new] = shard.name
    index_file.write_text(json.dumps(index))
    return shard


def test_renamed_tensor(sharded, tmp_path):
    folder = copy_of(sharded, tmp_path)
    shard = _rename_tensor(folder, "model.norm.weight", "model.final_norm.weight")
    with pytest.raises(CheckpointError, match=f"{shard.name}: unexpected tensor 'model.final_norm.weight'"):
        load_pretrained(folder, progress=False)


def test_index_lists_a_tensor_the_shard_lacks(sharded, tmp_path):
    folder = copy_of(sharded, tmp_path)
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    elsewhere = next(f for f in sorted(set(weight_map.values())) if f != weight_map["model.norm.weight"])
    # the index now points at the wrong shard
    edit_json(folder / "model.safetensors.index.json", lambda raw: raw["weight_map"].update({"model.norm.weight": elsewhere}))
    with pytest.raises(CheckpointError, match=f"{elsewhere}: the index lists .'model.norm.weight'. here"):
        load_pretrained(folder, progress=False)


def edit_json(file, edit):
    """Apply `edit` (a function changing a dict in place) to a JSON file."""
    raw = json.loads(file.read_text())
    edit(raw)
    file.write_text(json.dumps(raw))


def test_config_with_a_changed_width(sharded, tmp_path):
    def double_mlp(raw):  # both the flat copy and the nested text_config that save_pretrained writes
        for d in (raw, raw.get("text_config", {})):
            d["intermediate_size"] = raw["intermediate_size"] * 2

    folder = copy_of(sharded, tmp_path)
    edit_json(folder / "config.json", double_mlp)
    with pytest.raises(CheckpointError, match=r"tensor 'model.layers.0.mlp.(gate|up|down)_proj.weight' has shape"):
        load_pretrained(folder, progress=False)


def test_config_of_another_model(sharded, tmp_path):
    folder = copy_of(sharded, tmp_path)
    edit_json(folder / "config.json", lambda raw: raw.update(model_type="llava"))
    with pytest.raises(ValueError, match="model_type is 'llava'"):
        load_pretrained(folder, progress=False)


PEAK_SCRIPT = """
import sys, threading, time, psutil, torch
from qvl_minimal.weights import load_pretrained
proc = psutil.Process(); base = proc.memory_info().rss; peak = [base]; done = [False]
def watch():
    while not done[0]:
        peak[0] = max(peak[0], proc.memory_info().rss); time.sleep(0.005)
threading.Thread(target=watch, daemon=True).start()
model = load_pretrained(sys.argv[1], dtype=getattr(torch, sys.argv[2]), progress=False)
for p in model.parameters():  # touch every page: a memory-mapped weight counts once it is read
    p.detach().reshape(-1)[::512].float().sum()
done[0] = True; peak[0] = max(peak[0], proc.memory_info().rss)
size = sum(p.numel() * p.element_size() for p in model.parameters())
print(size, peak[0] - base)
"""


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_peak_memory_of_loading_a_full_width_checkpoint(dtype):
    """Loading the full-width stand-in (every 3B width, 543M parameters) in a fresh process, then
    reading every weight once: the memory it adds must stay under 1.2 x the size of the weights in
    the target dtype (bfloat16: the weights are the file's pages, mapped; float32: converted copies)."""
    folder = standin_checkpoint("full")
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(folder), dtype], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True).stdout.split()
    size, added = int(out[0]), int(out[1])
    print(f"{dtype}: weights {size / 1e9:.2f} GB, added {added / 1e9:.2f} GB, ratio {added / size:.3f}")
    assert size > 1e9 if dtype == "float32" else size > 5e8
    assert added < 1.2 * size


def test_reference_on_our_tensors_shares_memory_and_agrees(sharded):
    """Chapter 11 builds the reference on our loaded tensors (no second copy of 3B)."""
    from qvl_minimal.reference import reference_sharing_weights

    ours = load_pretrained(sharded, dtype=torch.float32, progress=False)
    ref = reference_sharing_weights(ours)
    assert ref.model.language_model.layers[0].mlp.up_proj.weight.data_ptr() == \
        ours.model.layers[0].mlp.up_proj.weight.data_ptr()
    assert ref.lm_head.weight.data_ptr() == ours.lm_head.weight.data_ptr()  # the small stand-in is untied
    pixels = torch.randn(16, 1176)
    with torch.no_grad():
        compare("logits (shared tensors)", ours(IDS, pixel_values=pixels, image_grid_thw=GRID),
                ref(input_ids=IDS, pixel_values=pixels, image_grid_thw=GRID).logits, tol=1e-5)
