"""Checkpoint folder -> Qwen25VL, one tensor at a time, every tensor checked.

A checkpoint in the Hugging Face layout is a `config.json` plus either one `model.safetensors`
or several shards listed by `model.safetensors.index.json`. A safetensors file is simple:

    8 bytes       little-endian length n of the header
    n bytes       JSON: {name: {"dtype": "BF16", "shape": [...], "data_offsets": [begin, end]}, ...}
    the rest      the raw bytes of every tensor, back to back

We read it ourselves (a dozen lines) instead of memory-mapping it, for two reasons a reader
of this chapter will meet: (1) memory: each tensor's bytes are read straight into a buffer and
converted into its final parameter, so peak memory stays near the size of the model itself,
with no page cache of a 4 GB shard counted against us; (2) errors: a truncated download or a
renamed tensor is reported with the file and the tensor's name.

The model is first built on the meta device (shapes only, no memory), then each parameter is
replaced by the tensor read from disk.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .config import Qwen25VLConfig
from .dtypes import choose_dtype
from .model import Qwen25VL

HUB_REPO = "Qwen/Qwen2.5-VL-3B-Instruct"
DOWNLOAD_HINT = (
    f"Download the weights once with `hf download {HUB_REPO} --local-dir DIR` (or "
    f"`huggingface-cli download {HUB_REPO} --local-dir DIR`) and set QVL_CHECKPOINT=DIR, "
    "or pass the folder explicitly."
)
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64}


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message names the file and the tensor."""


def hub_snapshot(repo_dir: Path) -> Path | None:
    """models--Qwen--X/ -> models--Qwen--X/snapshots/<hash>/: the one refs/main names, or the only one.

    None when there is no snapshot; several snapshots and no refs/main is an error (we do not guess).
    """
    ref = repo_dir / "refs" / "main"
    if ref.is_file() and (repo_dir / "snapshots" / ref.read_text().strip()).is_dir():
        return repo_dir / "snapshots" / ref.read_text().strip()
    snapshots = sorted(p for p in (repo_dir / "snapshots").glob("*") if p.is_dir())
    if len(snapshots) > 1:
        raise FileNotFoundError(f"{repo_dir}: {len(snapshots)} snapshots {[p.name for p in snapshots]} and no "
                                "refs/main to choose; pass the snapshot folder you mean")
    return snapshots[0] if snapshots else None


def find_checkpoint(path: str | os.PathLike | None = None) -> Path:
    """The checkpoint folder: `path`, else $QVL_CHECKPOINT, else the default Hugging Face hub cache.

    Accepts a plain folder, a hub cache repo folder (models--Qwen--...), or one of its snapshots.
    """
    candidates = [path] if path else [os.environ.get("QVL_CHECKPOINT")]
    if not any(candidates):
        hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache/huggingface")) / "hub")
        candidates = [hub / ("models--" + HUB_REPO.replace("/", "--"))]
    for candidate in filter(None, candidates):
        folder = Path(candidate).expanduser()
        if (folder / "config.json").is_file():
            return folder
        if folder.is_dir() and (snapshot := hub_snapshot(folder)) and (snapshot / "config.json").is_file():
            return snapshot
    where = path or os.environ.get("QVL_CHECKPOINT") or candidates[0]
    raise FileNotFoundError(f"no Qwen2.5-VL checkpoint (config.json) found at {where}. {DOWNLOAD_HINT}")


def read_header(file: Path) -> tuple[dict, int]:
    """Parse a safetensors header -> ({name: (dtype, shape, begin, end)}, offset of the data)."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{file.name}: only {size} bytes, not a safetensors file (truncated download?)")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            raise CheckpointError(f"{file.name}: header of {n} bytes but file has {size} (truncated download?)")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    entries = {k: (v["dtype"], tuple(v["shape"]), *v["data_offsets"]) for k, v in header.items()}
    end = max((e[3] for e in entries.values()), default=0)
    if 8 + n + end > size:
        raise CheckpointError(
            f"{file.name}: truncated: its header needs {8 + n + end:,} bytes, the file has {size:,}. "
            "Download the file again."
        )
    return entries, 8 + n


def read_tensor(f, entry: tuple, data_start: int) -> torch.Tensor:
    """Read one tensor's bytes from an open file straight into a new CPU tensor."""
    dtype, shape, begin, end = entry
    if dtype not in DTYPES:
        raise CheckpointError(f"unsupported safetensors dtype {dtype}")
    if end == begin:
        return torch.empty(shape, dtype=DTYPES[dtype])
    buffer = bytearray(end - begin)
    f.seek(data_start + begin)
    f.readinto(buffer)
    return torch.frombuffer(buffer, dtype=DTYPES[dtype]).reshape(shape)


def shard_files(folder: Path) -> dict[Path, list[str]]:
    """Every safetensors file of the checkpoint and the tensor names it should hold."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards: dict[Path, list[str]] = {}
        for name, file in json.loads(index.read_text())["weight_map"].items():
            shards.setdefault(folder / file, []).append(name)
    elif (folder / "model.safetensors").is_file():
        shards = {folder / "model.safetensors": None}  # a single file: it holds what its header says
    else:
        raise CheckpointError(f"{folder}: neither model.safetensors.index.json nor model.safetensors. {DOWNLOAD_HINT}")
    for file in shards:
        if not file.is_file():
            raise CheckpointError(f"{file.name} is listed in model.safetensors.index.json but missing. {DOWNLOAD_HINT}")
    return shards


def _set_tensor(model: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(module_name), attr, torch.nn.Parameter(tensor, requires_grad=False))


@torch.no_grad()
def load_pretrained(path=None, dtype: torch.dtype | str | None = None, device: str = "cpu",
                    progress: bool = True) -> Qwen25VL:
    """Load a Qwen2.5-VL checkpoint folder into our model, one tensor at a time.

    dtype None picks what is best for the device (`dtypes.choose_dtype`: bfloat16 on a GPU and on a
    CPU with native bfloat16 matrix products, float32 on other CPUs; $QVL_DTYPE overrides) and
    prints one line saying which and why. Every tensor is checked against the model:
    a missing or unexpected name, a wrong shape or a truncated shard is an error naming it.
    """
    folder = find_checkpoint(path)
    config = Qwen25VLConfig.from_pretrained(folder)
    dtype, why = choose_dtype(device, dtype)
    if progress:
        print(f"computing in {str(dtype).removeprefix('torch.')}: {why}", file=sys.stderr)
    with torch.device("meta"):
        model = Qwen25VL(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    loaded: set[str] = set()
    shards = shard_files(folder)
    for file, names in tqdm(shards.items(), desc="loading shards", unit="shard", disable=not progress):
        entries, data_start = read_header(file)
        if names is not None and (absent := sorted(set(names) - entries.keys())):
            raise CheckpointError(f"{file.name}: the index lists {absent[:3]} here, but the file does not hold them")
        with open(file, "rb") as f:
            for name, entry in entries.items():
                if name not in expected:
                    raise CheckpointError(f"{file.name}: unexpected tensor {name!r} (not part of this model)")
                if entry[1] != expected[name]:
                    raise CheckpointError(
                        f"{file.name}: tensor {name!r} has shape {entry[1]}, the config says {expected[name]}; "
                        "the config.json and the weights belong to different models"
                    )
                _set_tensor(model, name, read_tensor(f, entry, data_start).to(device=device, dtype=dtype))
                loaded.add(name)
    if missing := sorted(expected.keys() - loaded):
        raise CheckpointError(f"{folder.name}: {len(missing)} tensors missing from the checkpoint, e.g. {missing[:3]}")
    return model.eval()
