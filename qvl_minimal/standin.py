"""Stand-in checkpoints: the hub's layout and key names, written by the reference itself.

No machine here can download Qwen2.5-VL-3B-Instruct, so the loader, chapter 11 and the command
line also run on checkpoints that transformers' own `save_pretrained` writes from the project's
copy of the real config.json, with fewer blocks and layers and random weights. Same files, same
names, same code path; the answers are noise.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .config import CONFIG_DIR, Qwen25VLConfig
from .reference import TRANSFORMERS_VERSION, build_reference
from .tokenizer_files import write_tokenizer_files  # Qwen2.5-VL's tokenizer files and chat template

STANDIN_CACHE = Path(os.environ.get("QVL_CACHE", Path.home() / ".cache" / "qvl_minimal"))


def standin_config(kind: str = "full") -> Qwen25VLConfig:
    """The real 3B config.json (the project's copy) with fewer blocks and layers.

    "full": every width of 3B kept, 2 vision blocks (block 1 with full attention) and 2 decoder
    layers. "small": the tiny preset. Random weights: they compute, they do not describe photos.
    """
    if kind == "small":
        return Qwen25VLConfig.preset("tiny")
    real = Qwen25VLConfig.from_pretrained(CONFIG_DIR / "qwen2.5-vl-3b-instruct.config.json")
    return real.replace(vision_config={"depth": 2, "fullatt_block_indexes": (1,)},
                        text_config={"num_hidden_layers": 2})


def write_standin_checkpoint(folder, config: Qwen25VLConfig, seed: int = 0, dtype=torch.bfloat16,
                             max_shard_size: str = "500MB", build=build_reference) -> Path:
    """Write a checkpoint with transformers' own save_pretrained: the hub's file layout and key
    names (config.json, model-0000i-of-0000n.safetensors, model.safetensors.index.json), plus
    the tokenizer files, so that loading it exercises exactly the code path of the real one.
    `build`: the reference's builder (qwen3vl.reference.build_reference writes a Qwen3-VL one)."""
    folder = Path(folder)
    model = build(config, seed=seed).to(dtype)
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    del model
    write_tokenizer_files(folder)
    return folder


def standin_checkpoint(kind: str = "full", dtype=torch.bfloat16) -> Path:
    """A cached stand-in checkpoint folder (written once, reused by later runs)."""
    config = standin_config(kind)
    key = hashlib.sha1(json.dumps([config.to_dict(), str(dtype), TRANSFORMERS_VERSION, 2]).encode()).hexdigest()[:10]
    folder = STANDIN_CACHE / f"standin-{kind}-{key}"
    if not folder.is_dir():
        STANDIN_CACHE.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".partial-", dir=STANDIN_CACHE))  # one per writer
        write_standin_checkpoint(tmp, config, dtype=dtype)
        try:
            tmp.rename(folder)  # only a complete folder ever carries the final name
        except OSError:  # another process finished the same stand-in first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
