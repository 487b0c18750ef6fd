"""The student kernel's half of grading: it hands the grader an answer's values, never a verdict.

    grader (remote.py)                                   student kernel (this module)
    torch.save(request) -> FOLDER/request.pt
    runs the hidden cell  serve("FOLDER")  ──────────>   request = torch.load(FOLDER/request.pt)
                                                         "fetch": eval the check cell's answer expression
                                                         "call":  handle(*args, **kwargs)
                                                         "getattr": getattr(handle, name)
    load_data(FOLDER/response.pt) <───────────────────   torch.save({"value": data} | {"handle": id, ...}
                                                                    | {"raised": type, "message": ...})

A value crosses as data when it is made only of None, bool, int, float, complex, str, bytes, tensors,
dtypes, shapes, devices, range, slice, numpy arrays and scalars of numbers (sent as bytes, dtype and
shape), and tuples, lists, dicts, sets and frozensets of those (subclasses such as a namedtuple are
sent as their base type). Anything else (a function, a class, an instance) stays here under a handle number, which the grader
calls or reads attributes of. The request comes from the grader and is unpickled in full; the
response is read by the grader with `torch.load(weights_only=True)` (see remote.py), so that nothing
the student's code builds can run code in the grader.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

_HANDLES: dict[int, object] = {}
_LEAVES = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.Size, torch.device, range, slice)


class Array:
    """A numpy array or scalar of numbers (bool, int, uint, float, complex) as bytes, dtype and shape."""

    def __init__(self, data: bytes, dtype: str, shape: tuple, scalar: bool):
        self.data, self.dtype, self.shape, self.scalar = data, dtype, shape, scalar


class Handle:
    """A kernel object the grader cannot receive as data: its number here, and what it is."""

    def __init__(self, number: int, kind: str, is_callable: bool):
        self.number, self.kind, self.is_callable = number, kind, is_callable


def resolve(number: int):
    """What a grader-side proxy stands for, when the grader passes it back as an argument."""
    return _HANDLES[number]


def as_data(value, depth: int = 0):
    """`value` as plain data (see the module docstring), with a Handle in place of each other object."""
    if depth > 50:
        raise ValueError("the answer is nested more than 50 levels deep")
    if type(value) in _LEAVES:
        return value
    if value is Ellipsis:  # the stub's `answer = ...`; torch.load(weights_only=True) cannot read it
        return Handle(0, "ellipsis", False)
    if isinstance(value, torch.Tensor) and type(value) in (torch.Tensor, torch.nn.Parameter):
        return value.detach()
    numpy = sys.modules.get("numpy")  # only if the student's code imported it
    if numpy is not None and isinstance(value, (numpy.ndarray, numpy.generic)) and numpy.asarray(value).dtype.kind in "biufc":
        array = numpy.ascontiguousarray(value)
        return Array(array.tobytes(), array.dtype.str, tuple(int(n) for n in array.shape), isinstance(value, numpy.generic))
    for base in (bool, int, float, complex, str, bytes):  # numpy.float64, an IntEnum, a str subclass
        if isinstance(value, base):
            return base(value)
    if isinstance(value, (tuple, list, set, frozenset)):
        items = [as_data(item, depth + 1) for item in value]
        base = next(b for b in (tuple, list, frozenset, set) if isinstance(value, b))
        return base(items)
    if isinstance(value, dict):
        return {as_data(k, depth + 1): as_data(v, depth + 1) for k, v in value.items()}
    number = len(_HANDLES) + 1
    _HANDLES[number] = value
    return Handle(number, type(value).__name__, callable(value))


def serve(folder: str, namespace: dict | None = None) -> None:
    """Answer the grader's one request in FOLDER (the hidden cell the grader runs calls this)."""
    folder = Path(folder)
    if namespace is None:
        namespace = get_ipython().user_ns  # noqa: F821 (defined in an IPython kernel)
    request = torch.load(folder / "request.pt", weights_only=False)  # written by the grader
    try:
        if request["op"] == "fetch":
            value = eval(request["expression"], namespace)  # the check cell's own argument, in the student's namespace
        elif request["op"] == "call":
            value = _HANDLES[request["handle"]](*request["args"], **request["kwargs"])
        else:
            value = getattr(_HANDLES[request["handle"]], request["name"])
        response = {"value": as_data(value)}
    except BaseException as e:  # the student's code raised (or exited): the grader says so
        response = {"raised": type(e).__name__, "message": str(e)[:2000]}
    torch.save(response, folder / "response.tmp")
    (folder / "response.tmp").replace(folder / "response.pt")
