"""A Qwen3-VL checkpoint folder -> Qwen3VL, with the checks and the reader of `qvl_minimal.weights`.

`qvl_minimal.load_pretrained(folder)` reads config.json's model_type and comes here for
"qwen3_vl". The folder's files are read as for Qwen2.5-VL (safetensors_io: strict headers,
memory-mapped tensors); what differs is the layout of names, which is our module tree as it is:
`model.visual.*`, `model.language_model.*`, `lm_head.weight` (absent when tied). Every tensor is
checked (name, shape, floating-point dtype, stored once, none missing) before one is read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..checkpoint_check import check_stored_tensors, find_checkpoint, no_random_init, shard_files
from ..config import GenerationConfig, read_json_object
from ..dtypes import choose_dtype
from ..safetensors_io import CheckpointError, map_file, mapped_tensor, read_header, release_pages
from .config import Qwen3VLConfig
from .model import Qwen3VL


def model_type(path) -> str | None:
    """config.json's model_type of a checkpoint folder (or of the default one); None if there is none
    to read (the Qwen2.5-VL loader's checks then say what is wrong with the folder)."""
    try:
        return read_json_object(find_checkpoint(path) / "config.json", "download it again").get("model_type")
    except (OSError, ValueError):  # no folder, no config.json, not JSON
        return None


def _checked_entries(folder: Path, expected: dict, tied: bool) -> tuple[dict, tuple | None]:
    """{file: (entries, data_start)} of every shard, every tensor checked (checkpoint_check's one rule;
    the names are our module tree as they are); and a tied checkpoint's stored lm_head, if any."""
    listed = shard_files(folder)
    headers = {file: read_header(file) for file in listed}
    return headers, check_stored_tensors(folder, headers, listed, expected, tied)


@torch.no_grad()
def load_qwen3vl(path, dtype: torch.dtype | str | None = None, device: str = "cpu", progress: bool = True,
                 allow_float16: bool = False) -> Qwen3VL:
    """Load a Qwen3-VL checkpoint folder into Qwen3VL (dtype chosen as for Qwen2.5-VL; float16 refused
    unless allow_float16, as there)."""
    from ..weights import _check_stored_head, _set_tensor  # shared with the Qwen2.5-VL loader

    folder = find_checkpoint(path)
    try:
        config = Qwen3VLConfig.from_pretrained(folder)
        generation = GenerationConfig.from_pretrained(folder, config)
    except ValueError as e:  # the message names the file
        raise CheckpointError(str(e)) from None
    dtype, why = choose_dtype(device, dtype)
    if dtype == torch.float16 and not allow_float16:
        raise ValueError("float16 is refused (its range overflows in vision towers); use bfloat16 or float32, "
                         "or pass allow_float16=True")
    if progress:
        print(f"Qwen3-VL, computing in {str(dtype).removeprefix('torch.')}: {why}", file=sys.stderr)
    with torch.device("meta"), no_random_init():
        model = Qwen3VL(config)  # shapes only
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    headers, stored_head = _checked_entries(folder, expected, config.text_config.tie_word_embeddings)
    model.generation_config = generation
    on_cpu = torch.device(device).type == "cpu"
    embed = None
    for file, (entries, data_start) in headers.items():
        mapped = map_file(file)
        for name, entry in entries.items():
            if stored_head is not None and name == "lm_head.weight":
                continue  # a tied checkpoint's stored head: compared with the embedding table below
            tensor = mapped_tensor(mapped, entry, data_start)  # a view of the file: no copy
            if not (on_cpu and tensor.dtype == dtype):
                tensor = tensor.to(device=device, dtype=dtype)
                release_pages(mapped, entry, data_start)
            _set_tensor(model, name, tensor)
            if name == "model.language_model.embed_tokens.weight":
                embed = (file, entry, data_start)
    if stored_head is not None:
        _check_stored_head(stored_head, embed, folder, progress)
    return model.eval()
