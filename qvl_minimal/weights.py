"""Checkpoint folder -> Qwen25VL, one tensor at a time, every tensor checked.

A checkpoint in the Hugging Face layout is a `config.json` plus either one `model.safetensors`
or several shards listed by `model.safetensors.index.json`. `safetensors_io` reads them strictly
(every header field checked; a checkpoint from the internet is untrusted input). A tensor kept
in its stored dtype becomes a view of the memory-mapped file (no copy: loading the 3B's 7.5 GB of
bfloat16 takes 0.2 s); a tensor converted at load is converted out of the map, one at a time, and
its file pages dropped, so peak memory stays near the size of the model itself. Before any of that,
`checkpoint_check.check_checkpoint_folder` checks the whole folder: a truncated download or a renamed
tensor is reported with the file and the tensor's name.

The map is private (copy-on-write) for OUR writes only: changing a loaded tensor never changes the
file. It is not a snapshot. A checkpoint file rewritten in place while a model maps it (a second
download into the same folder, a script saving over it) changes that model's weights silently, with no
error (8 bytes rewritten in the file are 8 bytes changed in the model); truncating it kills the process
(SIGBUS). Replace files by writing a new one and renaming it over the old (what `hf download` does),
or load again after changing them.

The model is first built on the meta device (shapes only, no memory, no random initialisation),
then each parameter is replaced by the tensor from disk.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

# what a valid folder is: checkpoint_check.py (importable from here too: chapter 11, tests and lora.py do)
from .checkpoint_check import (DOWNLOAD_HINT, HUB_REPO, RENAMES_452, check_checkpoint_folder,  # noqa: F401
                               checkpoint_layout, find_checkpoint, hub_snapshot, no_random_init, shard_files)
from .dtypes import choose_dtype
from .model import Qwen25VL
from .packed import pack_linears
from .storage import choose_storage, storage_dtype, store_in_bfloat16
from .safetensors_io import (DTYPES, CheckpointError, map_file, mapped_tensor, read_header,  # noqa: F401
                             read_tensor, release_pages)

def _set_tensor(model: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(module_name), attr, torch.nn.Parameter(tensor, requires_grad=False))


def _same_tensor(a: tuple, b: tuple, chunk: int = 1 << 26) -> bool:
    """Do two stored tensors, each (file, entry, data_start), hold the same values? Bytes compared
    chunk by chunk (no second copy of a 600 MB table); different dtypes compared as float32."""
    (file_a, entry_a, start_a), (file_b, entry_b, start_b) = a, b
    if entry_a[1] != entry_b[1]:
        return False
    with open(file_a, "rb") as fa, open(file_b, "rb") as fb:
        if entry_a[0] != entry_b[0]:
            return torch.equal(read_tensor(fa, entry_a, start_a).float(), read_tensor(fb, entry_b, start_b).float())
        fa.seek(start_a + entry_a[2])
        fb.seek(start_b + entry_b[2])
        left = entry_a[3] - entry_a[2]
        while left:
            n = min(chunk, left)
            if fa.read(n) != fb.read(n):
                return False
            left -= n
    return True


def _check_stored_head(head: tuple, embed: tuple, folder: Path, progress: bool) -> None:
    """A tied checkpoint that also stores lm_head.weight: fine if it equals the embedding table."""
    if _same_tensor(head, embed):
        if progress:
            print("lm_head.weight is stored too and equals model.embed_tokens.weight: one table kept "
                  "(tie_word_embeddings)", file=sys.stderr)
        return
    raise CheckpointError(
        f"{head[0].name}: 'lm_head.weight' differs from 'model.embed_tokens.weight', but {folder.name}/config.json "
        "says tie_word_embeddings: true (the head IS the embedding table), so the stored head would be dropped "
        "and the answers would change. If the head was trained apart, set \"tie_word_embeddings\": false in "
        "config.json and load again; otherwise the checkpoint is inconsistent.")


FLOAT16_REFUSAL = (
    "float16 is refused: the vision tower of the released 3B overflows it (block 31's MLP down "
    "projection reaches -inf; llama.cpp issue 17534), so every answer about an image is garbage. Use "
    "bfloat16 (the same memory, float32's range) or float32; allow_float16=True loads it anyway.")


@torch.no_grad()
def load_pretrained(path=None, dtype: torch.dtype | str | None = None, device: str = "cpu",
                    progress: bool = True, allow_float16: bool = False, storage: str | None = None,
                    pack: bool = False) -> Qwen25VL:
    """Load a Qwen2.5-VL checkpoint folder into our model, one tensor at a time.

    dtype None picks what is best for the device (`dtypes.choose_dtype`: bfloat16 on a GPU and on a
    CPU with native bfloat16 matrix products, float32 on other CPUs; $QVL_DTYPE overrides) and
    prints one line saying which and why; float16 is refused (FLOAT16_REFUSAL). Every tensor is
    checked against the model: a missing, unexpected or repeated name, a wrong shape or a broken
    shard is an error naming it. Both layouts of names load (checkpoint_layout; one line says which).
    A tied checkpoint may also store lm_head.weight if it equals the embedding table.
    storage="bfloat16" keeps the matrices in bfloat16 and computes in float32 one module at a time
    (storage.py); None chooses it when float32 weights would not fit in the memory available (one line).
    pack=True hands the loaded model to packed.pack_linears (inference only: oneDNN's packed weights,
    bit-identical to F.linear, used where they are; one line says whether), dropping each file page
    of a packed weight, so that the packed copy does not sit in memory beside the file's.
    generation_config.json is read into `model.generation_config` (the eos ids generate stops on).
    A folder whose config.json says model_type "qwen3_vl" loads into qwen3vl.Qwen3VL (qwen3vl/weights.py).
    """
    from .qwen3vl.weights import load_qwen3vl, model_type

    if model_type(path) == "qwen3_vl":  # config.json's model_type picks the model (Qwen3VL: qwen3vl/weights.py)
        if storage is not None:
            raise ValueError("storage is not built for Qwen3-VL; load it with storage=None")
        model = load_qwen3vl(path, dtype=dtype, device=device, progress=progress, allow_float16=allow_float16)
        if pack and progress:
            print("weights not packed: packed.py is wired into Qwen2.5-VL loads only; F.linear everywhere",
                  file=sys.stderr)
        return model
    checked = check_checkpoint_folder(path, tokenizer=False)  # every file checked before a weight is read
    folder, config = checked.folder, checked.config
    dtype, why = choose_dtype(device, dtype)
    if dtype == torch.float16:
        if not allow_float16:
            raise ValueError(FLOAT16_REFUSAL)
        warnings.warn(FLOAT16_REFUSAL.replace("is refused", "was allowed"), stacklevel=2)
    if progress:
        print(f"computing in {str(dtype).removeprefix('torch.')}: {why}", file=sys.stderr)
    storage, why = choose_storage(config, dtype, storage, device=device)
    if progress and storage:
        print(f"storing weights in {storage}: {why}", file=sys.stderr)
    if progress:
        print(f"checkpoint layout: {checked.layout}", file=sys.stderr)
    with torch.device("meta"), no_random_init():
        model = Qwen25VL(config)  # shapes only
    model.generation_config = checked.generation_config
    on_cpu = torch.device(device).type == "cpu"  # only there can a tensor stay a view of the file
    views = {}  # data pointer -> where in a mapped file, for each tensor left a view of the file
    for file, (entries, data_start) in tqdm(checked.headers.items(), desc="loading shards", unit="shard",
                                            disable=not progress):
        mapped = map_file(file)
        for stored, entry in entries.items():
            name = checked.rename(stored)
            if name == "lm_head.weight" and checked.stored_head:
                continue  # a tied checkpoint's stored head: compared with the embedding table below
            keep = storage_dtype(name, entry[1], dtype, storage)  # dtype, or bfloat16 in storage mode
            tensor = mapped_tensor(mapped, entry, data_start)  # a view of the file: no copy
            if not (on_cpu and keep == tensor.dtype):
                tensor = tensor.to(device=device, dtype=keep)  # converted or moved: a copy
                release_pages(mapped, entry, data_start)  # the file's pages are not needed any more
            else:
                views[tensor.data_ptr()] = (mapped, entry, data_start)  # still the file's bytes
            _set_tensor(model, name, tensor)
            if name == "model.embed_tokens.weight":
                embed = (file, entry, data_start)
    if checked.stored_head:
        _check_stored_head(checked.stored_head, embed, folder, progress)
    model = (store_in_bfloat16(model) if storage else model).eval()
    if pack:  # the weights were only read so far, so their pages can go back to the file
        said = pack_linears(model, release=lambda weight: release_pages(*views[weight.data_ptr()])
                            if weight.data_ptr() in views else None)
        if progress:
            print(said, file=sys.stderr)
    return model
