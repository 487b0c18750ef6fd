"""What a valid checkpoint folder is, said in one place: every file checked before a weight is read.

    check_checkpoint_folder(path, tokenizer=True) -> CheckedFolder, in this order:

    folder      find_checkpoint: `path`, else $QVL_CHECKPOINT, else the hub cache; config.json there
    config      config.json: Qwen2.5-VL's (Qwen3-VL's when model_type is "qwen3_vl"), every field of the
                right type, the sizes consistent (config.py, qwen3vl/config.py)
    generation  generation_config.json if present (else the defaults), every field typed
    shards      model.safetensors, or model.safetensors.index.json and every shard it names (inside the folder)
    headers     each shard's header, strictly (safetensors_io.read_header); each index entry in its shard
    tensors     one layout of names (checkpoint_layout), floating-point dtypes, every tensor the model has
                at its shape, none unexpected, none stored twice, none missing (a tied checkpoint may
                store lm_head.weight too: the loader compares its values, which needs the bytes)
    tokenizer   (tokenizer=True) tokenizer.json is Qwen2.5-VL's, the chat template file readable

`weights.load_pretrained` runs it with tokenizer=False (weights need no tokenizer); `describe` runs it
before the load with tokenizer=True, so anything wrong in the folder is one `error:` line, not a
traceback after a 20 s load. A problem is a CheckpointError (a ValueError) naming the file; a missing
folder or file is a FileNotFoundError that says how to download the checkpoint.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import GenerationConfig, Qwen25VLConfig
from .safetensors_io import CheckpointError, read_header

FLOAT_DTYPES = ("F32", "BF16", "F16", "F64")  # what a weight may be stored as; integers would be quantised weights

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
    if ref.is_file():
        name = ref.read_text(encoding="utf-8", errors="replace").strip()
        if not name or name in (".", "..") or Path(name).name != name or "\\" in name:
            raise CheckpointError(f"{ref}: names the snapshot {name[:80]!r}, which is not a folder name inside "
                                  f"{repo_dir / 'snapshots'} (a hub ref is a commit hash); fix or delete refs/main")
        if (repo_dir / "snapshots" / name).is_dir():
            return repo_dir / "snapshots" / name
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
        except (ValueError, RecursionError, KeyError, TypeError) as e:  # not UTF-8, not JSON, no weight_map
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



@contextmanager
def no_random_init():
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


@dataclass
class CheckedFolder:
    """A checkpoint folder that passed every check, with what was read on the way."""

    folder: Path
    config: Qwen25VLConfig
    generation_config: GenerationConfig
    headers: dict  # shard file -> ({stored name: (dtype, shape, begin, end)}, data_start), in file order
    layout: str  # one line: which layout of names
    rename: object  # stored name -> our name
    tokenizer: object = None  # QwenTokenizer when checked with tokenizer=True
    stored_head: tuple | None = field(default=None)  # (file, entry, data_start) of a tied checkpoint's lm_head


def expected_shapes(config: Qwen25VLConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name of our model and its shape, from a model built on the meta device (no memory)."""
    from .model import Qwen25VL
    from .qwen3vl import Qwen3VL, Qwen3VLConfig

    with torch.device("meta"), no_random_init():
        model = (Qwen3VL if isinstance(config, Qwen3VLConfig) else Qwen25VL)(config)
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _config_class(folder: Path):
    """Qwen3VLConfig for config.json's model_type "qwen3_vl", else Qwen25VLConfig (whose checks say what is wrong)."""
    from .qwen3vl import Qwen3VLConfig
    from .qwen3vl.weights import model_type

    return Qwen3VLConfig if model_type(folder) == "qwen3_vl" else Qwen25VLConfig


def check_checkpoint_folder(path=None, tokenizer: bool = True) -> CheckedFolder:
    """Check a checkpoint folder (see the module's docstring) -> CheckedFolder; nothing is loaded."""
    folder = path or "the default place"
    try:
        folder = find_checkpoint(path)
        config = _config_class(folder).from_pretrained(folder)  # Qwen2.5-VL's, or Qwen3-VL's by model_type
        generation = GenerationConfig.from_pretrained(folder, config)
        listed = shard_files(folder)
        headers = {file: read_header(file) for file in listed}
        checked = _check_tensors(folder, config, generation, listed, headers)
        if tokenizer:
            from .tokenizer_files import load_tokenizer  # it finds snapshots with this module's hub_snapshot

            checked.tokenizer = load_tokenizer(folder)
    except (FileNotFoundError, CheckpointError):
        raise
    except ValueError as e:  # config.json, generation_config.json, a tokenizer file: the message names it
        raise CheckpointError(str(e)) from None
    except OSError as e:  # a file we may not read, a folder where a file should be, a disk error
        raise CheckpointError(f"{folder}: cannot read {Path(e.filename or '?').name} ({e.strerror or e}); "
                              "check the file's permissions, or download it again") from None
    return checked


def _check_tensors(folder: Path, config, generation, listed: dict, headers: dict) -> CheckedFolder:
    """The stored tensors against the model the config describes (names, shapes, dtypes, once each)."""
    from .qwen3vl import Qwen3VLConfig

    if isinstance(config, Qwen3VLConfig):  # one layout: our module tree as it is (qwen3vl/weights.py)
        layout, rename = "Qwen3-VL's layout (model.visual.*, model.language_model.*)", lambda name: name
    else:
        layout, rename = checkpoint_layout([n for entries, _ in headers.values() for n in entries], folder.name)
    checked = CheckedFolder(folder, config, generation, headers, layout, rename)
    checked.stored_head = check_stored_tensors(folder, headers, listed, expected_shapes(config),
                                               config.text_config.tie_word_embeddings, rename)
    return checked


def check_stored_tensors(folder: Path, headers: dict, listed: dict, expected: dict, tied: bool,
                         rename=lambda name: name) -> tuple | None:
    """Every stored tensor against `expected` ({our name: shape}): in the shard the index names, stored
    once, floating point, part of the model, of its shape; and none missing. Shared by the Qwen2.5-VL and
    the Qwen3-VL loaders. -> a tied checkpoint's stored lm_head (file, entry, data_start), or None: its
    values are compared with the embedding table by the loader."""
    for file, (entries, _) in headers.items():
        if listed[file] is not None and (absent := sorted(set(listed[file]) - entries.keys())):
            raise CheckpointError(f"{file.name}: the index lists {absent[:3]} here, but the file does not hold them")
    seen: dict[str, Path] = {}
    stored_head = None
    for file, (entries, data_start) in headers.items():
        for stored, entry in entries.items():
            name = rename(stored)
            if name in seen:
                raise CheckpointError(f"{file.name}: tensor {stored!r} is stored a second time (also in {seen[name].name})")
            seen[name] = file
            if entry[0] not in FLOAT_DTYPES:
                raise CheckpointError(f"{file.name}: tensor {stored!r} is stored as {entry[0]}; this loader takes "
                                      f"floating-point weights ({', '.join(FLOAT_DTYPES)}), not quantised ones")
            if tied and name == "lm_head.weight":
                stored_head = (file, entry, data_start)
                continue
            if name not in expected:
                raise CheckpointError(f"{file.name}: unexpected tensor {stored!r} (not part of this model)")
            if tuple(entry[1]) != tuple(expected[name]):
                raise CheckpointError(f"{file.name}: tensor {stored!r} has shape {tuple(entry[1])}, the config says "
                                      f"{tuple(expected[name])}; the config.json and the weights belong to "
                                      "different models")
    if missing := sorted(expected.keys() - seen.keys()):
        raise CheckpointError(f"{folder.name}: {len(missing)} tensors missing from the checkpoint, e.g. {missing[:3]}")
    return stored_head
