"""The strict safetensors reader on broken and crafted files: each is a CheckpointError naming the
file, the tensor and what is wrong (before: silent wrong weights, or ValueError / KeyError /
RuntimeError / UnicodeDecodeError from deep inside)."""

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from qvl_minimal.safetensors_io import (MAX_HEADER_BYTES, CheckpointError, map_file, mapped_tensor, read_header,
                                        read_tensor, release_pages)
from qvl_minimal.weights import shard_files


def write_raw(path, header, data: bytes = b"\0" * 64):
    """A safetensors file from a header (dict, or raw bytes) and a data section, nothing checked."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def norm(begin, end=None, dtype="F32", shape=(4,)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, begin + 16 if end is None else end]}


def test_a_good_file_reads_back(tmp_path):
    file = tmp_path / "good.safetensors"
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.arange(4, dtype=torch.int64),
               "c": torch.zeros(0, 3, dtype=torch.bfloat16), "d": torch.ones(2, dtype=torch.uint16)}
    save_file(tensors, file, metadata={"format": "pt"})
    entries, start = read_header(file)
    with open(file, "rb") as f:
        for name, tensor in tensors.items():
            assert torch.equal(read_tensor(f, entries[name], start), tensor), name


def test_mapped_tensors_equal_read_ones_and_never_write_the_file(tmp_path):
    """The loader's zero-copy path: views of a private memory map. Same values as read_tensor, a
    misaligned tensor (hand-made file) is copied out, and writing a mapped tensor leaves the file as it was."""
    file = tmp_path / "good.safetensors"
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "c": torch.zeros(0, 3, dtype=torch.bfloat16),
               "d": torch.arange(5, dtype=torch.bfloat16)}
    save_file(tensors, file, metadata={"format": "pt"})
    entries, start = read_header(file)
    mapped = map_file(file)
    for name, tensor in tensors.items():
        assert torch.equal(mapped_tensor(mapped, entries[name], start), tensor), name
    before = file.read_bytes()
    mapped_tensor(mapped, entries["a"], start).fill_(7.0)  # copy-on-write: the process's copy only
    assert file.read_bytes() == before
    odd = write_raw(tmp_path / "odd.safetensors", {"b": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                                                    "w": norm(1)}, b"\0" + torch.arange(4.0).numpy().tobytes())
    entries, start = read_header(odd)  # w begins at byte 1 of the data section
    assert (start + 1) % 4  # not float32-aligned in the file
    assert torch.equal(mapped_tensor(map_file(odd), entries["w"], start), torch.arange(4.0))


def test_a_file_rewritten_in_place_changes_the_mapped_tensor_as_the_docstrings_say(tmp_path):
    """MAP_PRIVATE is copy-on-write for our writes only: 8 bytes written over the file in place (not a new
    file renamed over it) show up in a tensor already mapped, silently. The loader's docstrings say so."""
    import qvl_minimal.safetensors_io as safetensors_io
    import qvl_minimal.weights as weights

    file = tmp_path / "m.safetensors"
    save_file({"embed": torch.ones(4, 4)}, file)
    entries, start = read_header(file)
    tensor = mapped_tensor(map_file(file), entries["embed"], start)
    with open(file, "r+b") as f:  # another program rewrites the first 8 bytes of the tensor
        f.seek(start)
        f.write(b"\0" * 8)
    assert tensor[0, :2].tolist() == [0.0, 0.0] and tensor[0, 2:].tolist() == [1.0, 1.0]
    for doc in (" ".join(weights.__doc__.lower().split()), " ".join(safetensors_io.__doc__.lower().split())):
        assert "rewritten in place" in doc and "our writes" in doc


def test_released_pages_read_back_and_spare_the_neighbours(tmp_path):
    """release_pages drops a converted tensor's pages; the map still reads the file's bytes afterwards,
    and a neighbour sharing a page at either end keeps its values (those pages are never dropped)."""
    file = tmp_path / "three.safetensors"
    tensors = {"a": torch.arange(1000.0), "b": torch.arange(50_000.0), "c": -torch.arange(1000.0)}
    save_file(tensors, file, metadata={"format": "pt"})
    entries, start = read_header(file)
    mapped = map_file(file)
    views = {name: mapped_tensor(mapped, entries[name], start) for name in tensors}
    converted = views["b"].double()  # the loader's float32 path: a copy, then the pages released
    release_pages(mapped, entries["b"], start)
    assert torch.equal(converted, tensors["b"].double())
    for name, tensor in tensors.items():
        assert torch.equal(views[name], tensor), name


CASES = {  # name: (header, data, the message)
    "overlap": ({"layers.0.norm": norm(0), "layers.1.norm": norm(8)}, b"\0" * 32,
                r"tensor 'layers.1.norm' overlaps tensor 'layers.0.norm' \(bytes 8..16"),
    "reversed": ({"w": norm(16, 0)}, b"\0" * 32, r"tensor 'w': data_offsets are reversed \(16 > 0\)"),
    "wrong length": ({"w": norm(0, 12)}, b"\0" * 32, r"tensor 'w': holds 12 bytes, but shape \[4\] of F32 needs 16"),
    "no dtype": ({"w": {"shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16, r"tensor 'w': the header entry has no dtype"),
    "no shape": ({"w": {"dtype": "F32", "data_offsets": [0, 16]}}, b"\0" * 16, "tensor 'w': the header entry has no shape"),
    "no offsets": ({"w": {"dtype": "F32", "shape": [4]}}, b"\0" * 16, "tensor 'w': the header entry has no data_offsets"),
    "unknown dtype": ({"w": norm(0, dtype="F12")}, b"\0" * 16, r"tensor 'w': unknown dtype 'F12'; safetensors defines BOOL"),
    "bad shape": ({"w": {**norm(0), "shape": [4, -1]}}, b"\0" * 16, r"tensor 'w': shape \[4, -1\] is not a list"),
    "float shape": ({"w": {**norm(0), "shape": [4.0]}}, b"\0" * 16, r"tensor 'w': shape \[4.0\] is not a list"),
    "bad offsets": ({"w": {**norm(0), "data_offsets": [0]}}, b"\0" * 16, r"data_offsets \[0\] is not a pair"),
    "entry not object": ({"w": [1, 2]}, b"", "tensor 'w': its header entry is list, not an object"),
    "negative begin": ({"w": norm(-8, 8)}, b"\0" * 16, "tensor 'w': data_offsets begin at -8, before the data section"),
    "outside data": ({"a": norm(0), "w": norm(16)}, b"\0" * 24,
                     r"truncated: tensor 'w' ends at byte 32 of the data section, which holds 24"),
    "not utf-8": (b'{"w": "\xff\xfe"}', b"", r"the header is not UTF-8 text \(byte 7\)"),
    "not json": (b'{"w": ', b"", r"the header is not JSON \(Expecting value"),
    "json list": (b"[1, 2]", b"", "the header is a JSON list, not an object"),
    "dtype a list": ({"w": norm(0, dtype=["F32"])}, b"\0" * 16, r"tensor 'w': unknown dtype \['F32'\]"),
    "100k deep": (b"[" * 100_000 + b"]" * 100_000, b"", "the header nests too deep to parse"),
    "5000-digit shape": (b'{"w": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 16]}}',
                         b"\0" * 16, "the header holds a number too long to read"),
    "metadata a list": ({"__metadata__": ["pt"], "w": norm(0)}, b"\0" * 16, r'__metadata__ is \["pt"\], not an object'),
    "metadata not strings": ({"__metadata__": {"format": 1}, "w": norm(0)}, b"\0" * 16, "__metadata__ is"),
    "gap between tensors": ({"a": norm(0), "w": norm(32)}, b"\0" * 48,
                            r"bytes 16..32 of the data section, before tensor 'w', belong to no tensor"),
    "gap before the first": ({"w": norm(8)}, b"\0" * 24, "bytes 0..8 of the data section, before tensor 'w'"),
    "bytes after the last": ({"w": norm(0)}, b"\0" * 24, "the data section holds 8 bytes after the last tensor"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_header_is_a_checkpoint_error(tmp_path, case):
    header, data, message = CASES[case]
    file = write_raw(tmp_path / "model-00001-of-00002.safetensors", header, data)
    with pytest.raises(CheckpointError, match="^model-00001-of-00002.safetensors: .*" + message):
        read_header(file)


@pytest.mark.parametrize("case", ["gap between tensors", "gap before the first", "bytes after the last",
                                  "metadata a list"])
def test_the_safetensors_library_refuses_these_too(tmp_path, case):
    """Unowned bytes and a metadata list are not our invention: the reference reader refuses the same files."""
    from safetensors import safe_open

    header, data, _ = CASES[case]
    file = write_raw(tmp_path / "x.safetensors", header, data)
    with pytest.raises(Exception):
        with safe_open(str(file), "pt") as f:
            [f.get_tensor(k) for k in f.keys()]


def test_header_length_is_capped(tmp_path):
    file = tmp_path / "huge.safetensors"
    file.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}")  # a tiny file claiming a 100 MB header
    with pytest.raises(CheckpointError, match=r"huge.safetensors: header length 100,000,001 bytes is over the "
                                              r"100,000,000 byte cap"):
        read_header(file)
    assert MAX_HEADER_BYTES == 100_000_000


def test_a_file_that_shrinks_while_reading(tmp_path):
    file = write_raw(tmp_path / "m.safetensors", {"w": norm(0)}, b"\0" * 16)
    entries, start = read_header(file)
    file.write_bytes(file.read_bytes()[:-4])
    with open(file, "rb") as f, pytest.raises(CheckpointError, match="m.safetensors: the file ended inside"):
        read_tensor(f, entries["w"], start)


@pytest.mark.parametrize("target", ["/etc/passwd", "../outside.safetensors", "sub/../../x.safetensors", "", 7])
def test_index_paths_stay_inside_the_folder(tmp_path, target):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (tmp_path / "outside.safetensors").write_bytes(b"")
    index = {"metadata": {}, "weight_map": {"model.norm.weight": target}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"model.safetensors.index.json: tensor 'model.norm.weight' is mapped "
                                              r"to .*, which is not a file name inside the checkpoint folder"):
        shard_files(folder)


def test_index_that_is_not_json(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_bytes(b"\xff{")
    with pytest.raises(CheckpointError, match="model.safetensors.index.json: not an index file"):
        shard_files(tmp_path)
