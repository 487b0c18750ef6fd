"""A strict reader of safetensors files: every header field checked before a byte is read.

A safetensors file is simple:

    8 bytes       little-endian length n of the header (at most 100 MB, as the reference library)
    n bytes       UTF-8 JSON: {name: {"dtype": "BF16", "shape": [...], "data_offsets": [begin, end]}, ...}
    the rest      the data section: the raw bytes of every tensor, offsets counted from its start

A file from the internet is untrusted input, so `read_header` refuses, with a CheckpointError that
names the file and the tensor: a header that is not UTF-8 JSON, is longer than the cap, nests too deep
for the parser or holds a number too long to parse; `__metadata__` that is not {str: str}; an
entry without `dtype`, `shape` or `data_offsets`; a dtype that is not one of the strings safetensors
defines; a negative or non-integer size; offsets that are reversed, negative, outside the data
section, overlap another tensor's, or whose length is not shape x dtype size exactly; bytes of the
data section that no tensor owns (a gap between tensors, or bytes after the last: the safetensors
library refuses both). Only then are bytes taken:

    map_file + mapped_tensor   the file memory-mapped (内存映射) and each tensor a view of its bytes:
                               nothing is copied; the operating system brings each page in when it
                               is first touched, from the page cache (页缓存) if the file was read before
    release_pages              after a tensor was converted (copied) out of the map, its pages are
                               dropped from this process's memory (the loader's float32 path)
    read_tensor                the bytes read into a new tensor, with plain file reads (chapter 11)

Memory-mapping is what makes loading cost almost nothing (the 3B's 7.5 GB: 9 s read, 0.2 s mapped)
and what the reference's loader does too. The price, the same for both: the file must not be
rewritten or truncated while the model is in use. Truncated: a page that vanished from under a
mapping stops the process (SIGBUS) instead of raising an error. Rewritten in place (the same file
written over, not replaced by a new file): the model's weights silently become the new bytes, with
no error at all, because every page not yet copied is read from the file. The mapping is private
(MAP_PRIVATE, copy-on-write) in one direction only: OUR writes to a tensor stay in this process and
never reach the file; other programs' writes to the file DO reach the model. Replacing the file
(write a new file, then rename it over the old one, as downloads do) is safe: the map keeps the old one.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from pathlib import Path

import torch

MAX_HEADER_BYTES = 100_000_000  # the reference library's cap (safetensors' MAX_HEADER_SIZE)
DTYPES = {  # every dtype string the safetensors format defines -> (torch dtype, bytes per element)
    "BOOL": (torch.bool, 1), "U8": (torch.uint8, 1), "I8": (torch.int8, 1),
    "F8_E5M2": (torch.float8_e5m2, 1), "F8_E4M3": (torch.float8_e4m3fn, 1),
    "I16": (torch.int16, 2), "U16": (torch.uint16, 2), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
    "I32": (torch.int32, 4), "U32": (torch.uint32, 4), "F32": (torch.float32, 4),
    "I64": (torch.int64, 8), "U64": (torch.uint64, 8), "F64": (torch.float64, 8),
}


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message names the file and the tensor."""


def _entry(file: Path, name: str, raw) -> tuple[str, tuple[int, ...], int, int]:
    """One header entry -> (dtype, shape, begin, end), each field checked."""
    where = f"{file.name}: tensor {name!r}"
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: its header entry is {type(raw).__name__}, not an object")
    if absent := [k for k in ("dtype", "shape", "data_offsets") if k not in raw]:
        raise CheckpointError(f"{where}: the header entry has no {', '.join(absent)} (corrupt or not safetensors)")
    dtype, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise CheckpointError(f"{where}: unknown dtype {dtype!r}; safetensors defines {', '.join(DTYPES)}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise CheckpointError(f"{where}: shape {shape!r} is not a list of integers >= 0")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets):
        raise CheckpointError(f"{where}: data_offsets {offsets!r} is not a pair of integers [begin, end]")
    begin, end = offsets
    if begin < 0:
        raise CheckpointError(f"{where}: data_offsets begin at {begin}, before the data section")
    if end < begin:
        raise CheckpointError(f"{where}: data_offsets are reversed ({begin} > {end})")
    need = math.prod(shape) * DTYPES[dtype][1]
    if end - begin != need:
        raise CheckpointError(f"{where}: holds {end - begin} bytes, but shape {shape} of {dtype} needs {need}")
    return dtype, tuple(shape), begin, end


def read_header(file: Path) -> tuple[dict, int]:
    """Parse and check a safetensors header -> ({name: (dtype, shape, begin, end)}, offset of the data)."""
    file = Path(file)
    size = file.stat().st_size
    with open(file, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{file.name}: only {size} bytes, not a safetensors file (truncated download?)")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER_BYTES:
            raise CheckpointError(f"{file.name}: header length {n:,} bytes is over the {MAX_HEADER_BYTES:,} "
                                  "byte cap; this is not a safetensors file (or a corrupt one)")
        if n > size - 8:
            raise CheckpointError(f"{file.name}: header of {n} bytes but file has {size} (truncated download?)")
        text = f.read(n)
    header = _parse_json(file, text)
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{file.name}: __metadata__ is {json.dumps(metadata)[:80]}, not an object of "
                              "strings ({\"format\": \"pt\"}); the file is corrupt or crafted")
    entries = {name: _entry(file, name, raw) for name, raw in header.items()}
    data = size - 8 - n  # bytes in the data section
    end = max((e[3] for e in entries.values()), default=0)
    if end > data:
        last = max(entries, key=lambda k: entries[k][3])
        raise CheckpointError(
            f"{file.name}: truncated: tensor {last!r} ends at byte {end:,} of the data section, which holds "
            f"{data:,} (the file needs {8 + n + end:,} bytes, it has {size:,}). Download the file again.")
    spans = sorted((e[2], e[3], k) for k, e in entries.items() if e[3] > e[2])  # empty tensors own no bytes
    for (_, end_a, a), (begin_b, _, b) in zip(spans, spans[1:]):
        if begin_b < end_a:
            raise CheckpointError(f"{file.name}: tensor {b!r} overlaps tensor {a!r} (bytes {begin_b}..{end_a} "
                                  "are claimed by both); the file is corrupt or crafted")
    owned = 0  # the data section, walked in order: every byte must belong to a tensor
    for begin, end, name in spans:
        if begin != owned:
            raise CheckpointError(f"{file.name}: bytes {owned:,}..{begin:,} of the data section, before tensor {name!r}, "
                                  "belong to no tensor (the safetensors library refuses such a file); corrupt or crafted")
        owned = end
    if owned != data:
        raise CheckpointError(f"{file.name}: the data section holds {data - owned:,} bytes after the last tensor "
                              f"(bytes {owned:,}..{data:,} belong to no tensor; the safetensors library refuses "
                              "such a file); the file is corrupt, or was appended to")
    return entries, 8 + n


def _parse_json(file: Path, text: bytes) -> dict:
    """The header's bytes -> a dict, or a CheckpointError saying what is wrong with them."""
    try:
        header = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{file.name}: the header is not UTF-8 text (byte {e.start}); "
                              "not a safetensors file, or a corrupt one") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file.name}: the header is not JSON ({e.msg} at character {e.pos}); "
                              "not a safetensors file, or a corrupt one") from None
    except RecursionError:  # Python's parser recurses once per level: [[[[...]]]] 100,000 deep stops it
        raise CheckpointError(f"{file.name}: the header nests too deep to parse (a real one nests 3 levels); "
                              "the file is corrupt or crafted") from None
    except ValueError as e:  # a number of thousands of digits: Python refuses to convert it
        raise CheckpointError(f"{file.name}: the header holds a number too long to read ({str(e).split(':')[0]}); "
                              "the file is corrupt or crafted") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{file.name}: the header is a JSON {type(header).__name__}, not an object")
    return header


def read_tensor(f, entry: tuple, data_start: int) -> torch.Tensor:
    """Read one checked entry's bytes from an open file straight into a new CPU tensor."""
    dtype, shape, begin, end = entry
    if end == begin:
        return torch.empty(shape, dtype=DTYPES[dtype][0])
    buffer = torch.empty(end - begin, dtype=torch.uint8)  # not zero-filled: the file's bytes are written once
    f.seek(data_start + begin)
    if f.readinto(buffer.numpy()) != len(buffer):
        raise CheckpointError(f"{Path(f.name).name}: the file ended inside a tensor's bytes (it changed while loading?)")
    return buffer.view(DTYPES[dtype][0]).reshape(shape)


def map_file(file: Path) -> mmap.mmap:
    """The whole file memory-mapped, private: copy-on-write for OUR writes (they stay in memory, never reach
    the file), but not a snapshot: another program rewriting the file in place changes the tensors."""
    with open(file, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # the map keeps its own handle


def mapped_tensor(mapped: mmap.mmap, entry: tuple, data_start: int) -> torch.Tensor:
    """One checked entry as a view of a mapped file's bytes: no copy (see the module's docstring).

    A tensor whose bytes do not start at a multiple of its element size (safetensors aligns them;
    a hand-made file may not) is copied out instead, since a view needs aligned elements."""
    dtype, shape, begin, end = entry
    torch_dtype, size = DTYPES[dtype]
    offset = data_start + begin
    if end == begin:
        return torch.empty(shape, dtype=torch_dtype)
    if offset % size:
        raw = torch.frombuffer(mapped, dtype=torch.uint8, count=end - begin, offset=offset)
        return raw.clone().view(torch_dtype).reshape(shape)
    return torch.frombuffer(mapped, dtype=torch_dtype, count=(end - begin) // size, offset=offset).reshape(shape)


def release_pages(mapped: mmap.mmap, entry: tuple, data_start: int) -> None:
    """Drop from memory the whole pages that lie inside one tensor's bytes (its neighbours' pages are
    left alone). The mapping stays valid: a later read would bring them back from the file. Used once
    a tensor has been converted into a new one, so that converting a shard never holds the shard too.
    Where mmap has no madvise (Windows), the pages stay until the map is closed."""
    page, (_, _, begin, end) = mmap.PAGESIZE, entry
    first = -(-(data_start + begin) // page) * page  # rounded up to a page boundary
    last = (data_start + end) // page * page  # rounded down
    if last > first and hasattr(mapped, "madvise"):
        mapped.madvise(mmap.MADV_DONTNEED, first, last - first)
