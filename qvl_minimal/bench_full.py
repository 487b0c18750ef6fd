"""`python -m qvl_minimal bench --full`: the whole 3B architecture end to end, ours and the reference.

    full_standin()   a checkpoint with the real 3B config.json (32 vision blocks, 36 decoder layers) and
                     random bfloat16 weights in the hub's layout (shards + index + tokenizer files),
                     written once into the cache tensor by tensor: no model is ever built to write it,
                     so writing needs about one shard of memory (2 GB), not the 15 GB of a float32 model
    run_side(side)   one fresh process: load the checkpoint, answer chapter 11's question about the
                     sample photo with 32 new tokens; prints its wall time and peak resident memory

Each side runs in its own process, so that each peak memory is its own; with --repeats N the sides
alternate N times and the median run of each is printed. The dtype is what
load_pretrained chooses (dtypes.choose_dtype, storage.choose_storage); $QVL_DTYPE overrides. The
reference runs only where its bfloat16 model fits (it has no bfloat16-storage mode).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .cli_stats import peak_memory_bytes  # ru_maxrss in bytes on every platform (None where unknown)

MAX_NEW_TOKENS = 32
SHARD_BYTES = 2_000_000_000


def full_standin():
    """The cached full-depth stand-in folder; written on first use (about 7.5 GB on disk)."""
    from .config import CONFIG_DIR, Qwen25VLConfig
    from .model import Qwen25VL
    from .standin import STANDIN_CACHE

    folder = STANDIN_CACHE / "standin-3b-full-depth"
    if (folder / "model.safetensors.index.json").is_file():
        return folder
    source = CONFIG_DIR / "qwen2.5-vl-3b-instruct.config.json"
    config = Qwen25VLConfig.from_pretrained(source)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Qwen25VL(config).state_dict().items()}  # the checkpoint's names
    tmp = partial_folder(folder)
    try:
        write_shards(tmp, shapes, source)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed or interrupted run leaves nothing behind
        raise
    return publish(tmp, folder)


def partial_folder(folder: Path) -> Path:
    """A new, empty folder beside `folder`, its name unique to this run: two runs writing at once do
    not write into each other's files."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=folder.name + ".partial-", dir=folder.parent))


def publish(tmp: Path, folder: Path) -> Path:
    """Rename the finished `tmp` to `folder` in one step; if another run published first, keep theirs."""
    try:
        tmp.rename(folder)
    except OSError:
        if not (folder / "model.safetensors.index.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def write_shards(tmp: Path, shapes: dict, source: Path) -> None:
    """Random bfloat16 tensors of these shapes, in 2 GB shards with the hub's names, an index, the config
    and the tokenizer files, into `tmp`."""
    from safetensors.torch import save_file

    from .tokenizer_files import write_tokenizer_files

    generator = torch.Generator().manual_seed(0)
    shards, shard, size = [], {}, 0  # shards: the names written to each file (the tensors are dropped)
    for name, shape in shapes.items():  # randomize_'s rule: norms 1 + N(0, 0.1), the rest N(0, 0.02)
        noise = torch.randn(shape, generator=generator)
        is_norm = len(shape) == 1 and ("norm" in name or "ln_q" in name) and name.endswith(".weight")
        shard[name] = (1 + 0.1 * noise if is_norm else 0.02 * noise).bfloat16()
        del noise
        size += shard[name].nbytes
        if size > SHARD_BYTES or name == next(reversed(shapes)):
            shards.append(list(shard))
            save_file(shard, tmp / f"shard-{len(shards)}.safetensors", metadata={"format": "pt"})
            shard, size = {}, 0  # at most one shard (2 GB) in memory
    weight_map = {}
    for i, names in enumerate(shards, 1):  # the hub's names: model-0000i-of-0000n.safetensors
        final = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        (tmp / f"shard-{i}.safetensors").rename(tmp / final)
        weight_map.update({n: final for n in names})
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
    (tmp / "config.json").write_text(source.read_text())
    write_tokenizer_files(tmp)


@torch.no_grad()
def run_side(side: str, folder) -> dict:
    """Load + answer the photo question with 32 new tokens in this process -> times and peak memory."""
    from .dtypes import choose_dtype
    from .packed import PackedLinear
    from .preprocess import preprocess_image
    from .samples import sample_photo
    from .tokenizer import build_chat_prompt, encode_chat, load_tokenizer
    from .weights import load_pretrained

    question, start = "Describe this image.", time.perf_counter()
    dtype, _ = choose_dtype("cpu")
    if side == "ours":
        model = load_pretrained(folder, pack=True)  # as describe loads it; prints its dtype, storage and packing
        loaded = time.perf_counter()
        pixels, grid = preprocess_image(sample_photo())
        ids = encode_chat(load_tokenizer(folder), question, image_grid_thw=grid)  # (1, 403)
        new = model.generate(ids, MAX_NEW_TOKENS, pixel_values=pixels, image_grid_thw=grid, eos_token_id=-1)
    else:
        from transformers import Qwen2_5_VLForConditionalGeneration, logging

        from .reference import reference_processor

        logging.set_verbosity_error()
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=dtype)
        loaded = time.perf_counter()
        inputs = reference_processor(folder)(text=[build_chat_prompt(question, num_images=1)], images=[sample_photo()],
                                             return_tensors="pt")
        new = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, min_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        new = new[:, inputs["input_ids"].shape[1]:]
    end = time.perf_counter()
    dtype = str(next(p for n, p in model.named_parameters() if "norm" in n).dtype).removeprefix("torch.")  # computed in
    if getattr(model, "storage", None):
        dtype += f"/{model.storage} storage"
    if any(isinstance(m, PackedLinear) for m in model.modules()):
        dtype += ", packed"  # oneDNN's packed weights (packed.py)
    return {"side": side, "dtype": dtype, "load_s": loaded - start, "generate_s": end - loaded, "wall_s": end - start,
            "new_tokens": int(new.shape[1]), "peak_gb": peak_gb()}


def peak_gb() -> float:
    """This process's peak resident memory in GB (NaN where the platform cannot say)."""
    peak = peak_memory_bytes()
    return float("nan") if peak is None else peak / 1e9


def median_run(runs: list[dict]) -> dict:
    """One side's runs -> the run with the median wall time (its load and generate times with it); the
    highest peak memory of all."""
    middle = sorted(runs, key=lambda r: r["wall_s"])[(len(runs) - 1) // 2]
    return {**middle, "peak_gb": max(r["peak_gb"] for r in runs)}


def run_full(args) -> int:
    """Write the stand-in if needed, then run ours and the reference, each in a fresh process."""
    folder = full_standin()
    print(f"checkpoint: {folder.name} (the 3B config.json, random bfloat16 weights)", file=sys.stderr)
    from .config import Qwen25VLConfig
    from .dtypes import choose_dtype
    from .storage import choose_storage, weights_fit

    config = Qwen25VLConfig.from_pretrained(folder)
    dtype, why = choose_dtype("cpu")
    storage, why_storage = choose_storage(config, dtype)
    print(f"ours: computing in {str(dtype).removeprefix('torch.')} ({why})"
          + (f"; weights stored in {storage} ({why_storage})" if storage else ""))
    sides = ["ours", "reference"]
    fit, why_fit = weights_fit(config, dtype)
    if not fit:  # the reference keeps its weights in the compute dtype: it has no bfloat16-storage mode
        print(f"reference: skipped ({why_fit})")
        sides.remove("reference")
    runs = {side: [] for side in sides}
    for _ in range(args.repeats or 1):  # ours, reference, ours, ...: a noisy neighbour hurts both alike
        for side in sides:
            code = f"import json; from qvl_minimal.bench_full import run_side; print(json.dumps(run_side({side!r}, {str(folder)!r})))"
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
            if done.returncode:
                raise SystemExit(f"{side}: failed ({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode})")
            runs[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
    results = [median_run(runs[side]) for side in sides]
    print(f"whole 3B (32 vision blocks, 36 decoder layers), photo + 'Describe this image.', {MAX_NEW_TOKENS} new tokens, "
          f"one fresh process per run, {torch.get_num_threads()} threads, median of {len(runs['ours'])} run(s) per side")
    print(f"{'side':10s} {'dtype':26s} {'load s':>7s} {'generate s':>11s} {'wall s':>7s} {'peak GB':>8s}")
    for r in results:
        print(f"{r['side']:10s} {r['dtype']:26s} {r['load_s']:7.1f} {r['generate_s']:11.1f} {r['wall_s']:7.1f} {r['peak_gb']:8.2f}")
    if len(results) == 2:
        print(f"ours / reference: wall {results[0]['wall_s'] / results[1]['wall_s']:.2f}, "
              f"peak memory {results[0]['peak_gb'] / results[1]['peak_gb']:.2f}")
    return 0
