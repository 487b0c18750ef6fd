"""Checkpoint folder -> Qwen25VL, one tensor at a time, every tensor checked.

A checkpoint in the Hugging Face layout is a `config.json` plus either one `model.safetensors`
or several shards listed by `model.safetensors.index.json`. `safetensors_io` reads them strictly
(every header field checked; a checkpoint from the internet is untrusted input), each tensor's
bytes straight into a buffer converted into its final parameter, so peak memory stays near the
size of the model itself; a truncated download or a renamed tensor is reported with the file and
the tensor's name.

The model is first built on the meta device (shapes only, no memory), then each parameter is
replaced by the tensor read from disk.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .config import Qwen25VLConfig
from .dtypes import choose_dtype
from .model import Qwen25VL
from .safetensors_io import DTYPES, CheckpointError, read_header, read_tensor  # noqa: F401 (re-exported)

HUB_REPO = "Qwen/Qwen2.5-VL-3B-Instruct"
DOWNLOAD_HINT = (
    f"Download the weights once with `hf download {HUB_REPO} --local-dir DIR` (or "
    f"`huggingface-cli download {HUB_REPO} --local-dir DIR`) and set QVL_CHECKPOINT=DIR, "
    "or pass the folder explicitly."
)


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


def shard_files(folder: Path) -> dict[Path, list[str] | None]:
    """Every safetensors file of the checkpoint and the tensor names it should hold (None: the single
    file holds what its header says). Index entries must name files inside the folder."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index.name}: not an index file ({type(e).__name__}: {e}); "
                                  "it must be JSON with a weight_map {tensor name: shard file}") from None
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index.name}: weight_map is not an object {{tensor name: shard file}}")
        shards: dict[Path, list[str]] = {}
        for name, file in weight_map.items():
            parts = Path(file).parts if isinstance(file, str) else ()
            if not parts or Path(file).is_absolute() or ".." in parts or Path(file).drive:
                raise CheckpointError(f"{index.name}: tensor {name!r} is mapped to {file!r}, which is not a file "
                                      "name inside the checkpoint folder (absolute, or escaping it with '..')")
            shards.setdefault(folder / file, []).append(name)
    elif (folder / "model.safetensors").is_file():
        shards = {folder / "model.safetensors": None}
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
