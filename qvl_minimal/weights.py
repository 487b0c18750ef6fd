"""Checkpoint folder -> Qwen25VL, one tensor at a time, every tensor checked.

A checkpoint in the Hugging Face layout is a `config.json` plus either one `model.safetensors`
or several shards listed by `model.safetensors.index.json`. `safetensors_io` reads them strictly
(every header field checked; a checkpoint from the internet is untrusted input). A tensor kept
in its stored dtype becomes a view of the memory-mapped file (no copy: loading the 3B's 7.5 GB of
bfloat16 takes 0.2 s); a tensor converted at load is converted out of the map, one at a time, and
its file pages dropped, so peak memory stays near the size of the model itself. A truncated download
or a renamed tensor is reported with the file and the tensor's name.

The model is first built on the meta device (shapes only, no memory, no random initialisation),
then each parameter is replaced by the tensor from disk.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .config import GenerationConfig, Qwen25VLConfig
from .dtypes import choose_dtype
from .model import Qwen25VL
from .storage import choose_storage, storage_dtype, store_in_bfloat16
from .safetensors_io import (DTYPES, CheckpointError, map_file, mapped_tensor, read_header,  # noqa: F401
                             read_tensor, release_pages)

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


@contextmanager
def _no_random_init():
    """Build modules without their random initialisation: every parameter is replaced from the file
    anyway, and on the meta device the first `normal_` costs 1-2 s (it imports sympy) for nothing."""
    names = ("normal_", "uniform_", "kaiming_uniform_")
    saved = {n: getattr(torch.nn.init, n) for n in names}
    for n in names:
        setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch.nn.init, n, fn)


def _set_tensor(model: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(module_name), attr, torch.nn.Parameter(tensor, requires_grad=False))


# Two layouts of tensor names are in circulation. The released checkpoints (and transformers' own
# save_pretrained before 4.52 and again from 4.53) write visual.*, model.*, lm_head.weight: our
# module names. transformers 4.52.x wrote model.visual.* and model.language_model.*, and
# fine-tuning tools built on it still do; those names are renamed on load.
RENAMES_452 = (("model.language_model.", "model."), ("model.visual.", "visual."))


def checkpoint_layout(names, where: str = "checkpoint"):
    """The layout of these tensor names -> (one line saying which, a function: stored name -> ours)."""
    new = {n for n in names if n.startswith(tuple(old for old, _ in RENAMES_452))}
    if not new:
        return "the hub's layout (visual.*, model.*, lm_head.weight)", lambda name: name
    hub = sorted(n for n in set(names) - new if n != "lm_head.weight")
    if hub:
        raise CheckpointError(f"{where}: the tensor names mix two layouts: {sorted(new)[0]!r} (transformers "
                              f"4.52) beside {hub[0]!r} (the hub's); the checkpoint was assembled from two sources")

    def rename(name: str) -> str:
        for old, ours in RENAMES_452:
            if name.startswith(old):
                return ours + name.removeprefix(old)
        return name

    return "transformers 4.52's layout (model.visual.*, model.language_model.*), renamed on load", rename


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
                    progress: bool = True, allow_float16: bool = False, storage: str | None = None) -> Qwen25VL:
    """Load a Qwen2.5-VL checkpoint folder into our model, one tensor at a time.

    dtype None picks what is best for the device (`dtypes.choose_dtype`: bfloat16 on a GPU and on a
    CPU with native bfloat16 matrix products, float32 on other CPUs; $QVL_DTYPE overrides) and
    prints one line saying which and why; float16 is refused (FLOAT16_REFUSAL). Every tensor is
    checked against the model: a missing, unexpected or repeated name, a wrong shape or a broken
    shard is an error naming it. Both layouts of names load (checkpoint_layout; one line says which).
    A tied checkpoint may also store lm_head.weight if it equals the embedding table.
    storage="bfloat16" keeps the matrices in bfloat16 and computes in float32 one module at a time
    (storage.py); None chooses it when float32 weights would not fit in the memory available (one line).
    generation_config.json is read into `model.generation_config` (the eos ids generate stops on).
    """
    folder = find_checkpoint(path)
    config = Qwen25VLConfig.from_pretrained(folder)
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
    with torch.device("meta"), _no_random_init():
        model = Qwen25VL(config)  # shapes only
    model.generation_config = GenerationConfig.from_pretrained(folder, config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shards = shard_files(folder)
    headers = {file: read_header(file) for file in shards}  # every header checked before any weight is read
    layout, rename = checkpoint_layout([n for entries, _ in headers.values() for n in entries], folder.name)
    if progress:
        print(f"checkpoint layout: {layout}", file=sys.stderr)
    tied = config.text_config.tie_word_embeddings
    where: dict[str, tuple] = {}  # our name -> (file, entry, data_start) of what was loaded
    on_cpu = torch.device(device).type == "cpu"  # only there can a tensor stay a view of the file
    for file, names in tqdm(shards.items(), desc="loading shards", unit="shard", disable=not progress):
        entries, data_start = headers[file]
        if names is not None and (absent := sorted(set(names) - entries.keys())):
            raise CheckpointError(f"{file.name}: the index lists {absent[:3]} here, but the file does not hold them")
        mapped = map_file(file)
        for stored, entry in entries.items():
            name = rename(stored)
            if name in where:
                raise CheckpointError(f"{file.name}: tensor {stored!r} is stored a second time "
                                      f"(also in {where[name][0].name})")
            if tied and name == "lm_head.weight":
                where[name] = (file, entry, data_start)  # compared with the embedding table below
                continue
            if name not in expected:
                raise CheckpointError(f"{file.name}: unexpected tensor {stored!r} (not part of this model)")
            if entry[1] != expected[name]:
                raise CheckpointError(
                    f"{file.name}: tensor {stored!r} has shape {entry[1]}, the config says {expected[name]}; "
                    "the config.json and the weights belong to different models"
                )
            keep = storage_dtype(name, entry[1], dtype, storage)  # dtype, or bfloat16 in storage mode
            tensor = mapped_tensor(mapped, entry, data_start)  # a view of the file: no copy
            if not (on_cpu and keep == tensor.dtype):
                tensor = tensor.to(device=device, dtype=keep)  # converted or moved: a copy
                release_pages(mapped, entry, data_start)  # the file's pages are not needed any more
            _set_tensor(model, name, tensor)
            where[name] = (file, entry, data_start)
    if missing := sorted(expected.keys() - where.keys()):
        raise CheckpointError(f"{folder.name}: {len(missing)} tensors missing from the checkpoint, e.g. {missing[:3]}")
    if tied and "lm_head.weight" in where:
        _check_stored_head(where["lm_head.weight"], where["model.embed_tokens.weight"], folder, progress)
    return (store_in_bfloat16(model) if storage else model).eval()
