"""The grader's half of grading: the answer as the grader's checker sees it, fetched from the student's kernel.

    worker.py, after running a check cell `check("04.1", window_index_chapter)`:
        answer = Remote(run_hidden, folder).fetch("window_index_chapter")
            -> plain data (a tensor, an int, a tuple...)     read with torch.load(weights_only=True)
            -> or a RemoteObject for a function, class or object that stays in the kernel
        core.run_checker("04.1", answer)   # the grader's own copy of the checker, inputs drawn here
            -> answer(grid) on a RemoteObject: the arguments go to the kernel (torch.save), the student's
               function runs there, its result comes back as data (or as another RemoteObject)

Nothing the notebook does to `qvl_minimal.labs` inside its kernel reaches the grader's checker.
What crosses from the kernel is data only: `torch.load(weights_only=True)` with `range`, `slice`,
`frozenset`, kernel_side.Handle and kernel_side.Array (a numpy array of numbers as bytes) allowed, at most MAX_ANSWER_BYTES per reply; a student's exception
comes back as its type name and message (a built-in type such as ValueError or NotImplementedError is
raised again as itself, so that checkers that expect it work unchanged; any other as RemoteError).
"""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Callable

import torch

from . import kernel_side
from .kernel_side import Array, Handle

MAX_ANSWER_BYTES = 256 * 2**20
SAFE_GLOBALS = [range, slice, frozenset, Handle, Array]
HIDDEN_CELL = "__import__('qvl_minimal.labs.kernel_side', fromlist=['serve']).serve({folder!r})"


class RemoteError(Exception):
    """The student's code raised an exception that is not a built-in type (its name and message)."""


def load_data(path: Path):
    """A reply written by the kernel: data only, no code (see the module docstring)."""
    size = path.stat().st_size
    if size > MAX_ANSWER_BYTES:
        raise AssertionError(f"the answer takes {size / 2**20:.0f} MB; the grader reads at most "
                             f"{MAX_ANSWER_BYTES // 2**20} MB")
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        return torch.load(path, weights_only=True, map_location="cpu")


def _raise_again(name: str, message: str):
    kind = getattr(builtins, str(name), None)
    if isinstance(kind, type) and issubclass(kind, Exception) and not issubclass(kind, (StopIteration, StopAsyncIteration)):
        raise kind(message)
    raise RemoteError(f"{name}: {message}")


class Remote:
    """Requests to one kernel; `run_hidden(source)` runs a cell there that nobody sees."""

    def __init__(self, run_hidden: Callable[[str], None], folder: Path):
        self.run_hidden, self.folder = run_hidden, Path(folder)

    def request(self, **request):
        reply = self.folder / "response.pt"
        reply.unlink(missing_ok=True)
        torch.save(request, self.folder / "request.pt")
        self.run_hidden(HIDDEN_CELL.format(folder=str(self.folder)))
        if not reply.is_file():
            raise RemoteError("the kernel did not answer the grader (the notebook replaced or broke "
                              "qvl_minimal.labs.kernel_side?)")
        response = load_data(reply)
        if not isinstance(response, dict) or not ({"value"} <= response.keys() or {"raised", "message"} <= response.keys()):
            raise RemoteError("the kernel's reply is not a reply")
        if "raised" in response:
            _raise_again(response["raised"], str(response["message"]))
        return self.wrap(response["value"])

    def wrap(self, value):
        """Data as is, each Handle as a RemoteObject, through containers."""
        if isinstance(value, Handle):
            number = value.number if isinstance(value.number, int) else -1
            return Ellipsis if number == 0 else RemoteObject(self, number, str(value.kind), bool(value.is_callable))
        if isinstance(value, Array):
            import numpy

            dtype = numpy.dtype(str(value.dtype))
            if dtype.kind not in "biufc":
                raise RemoteError(f"the kernel sent an array of dtype {dtype}")
            array = numpy.frombuffer(bytes(value.data), dtype=dtype).reshape(tuple(value.shape)).copy()
            return array[()] if value.scalar else array
        if isinstance(value, (tuple, list, set, frozenset)):
            return type(value)(self.wrap(item) for item in value)
        if isinstance(value, dict):
            return {self.wrap(k): self.wrap(v) for k, v in value.items()}
        return value

    def fetch(self, expression: str):
        """The value of the check cell's answer expression in the student's namespace."""
        return self.request(op="fetch", expression=expression)


class RemoteObject:
    """A function, class or object of the student's kernel: calls and attribute reads are forwarded."""

    __slots__ = ("_remote", "_number", "_kind", "_callable")

    def __init__(self, remote: Remote, number: int, kind: str, is_callable: bool):
        object.__setattr__(self, "_remote", remote)
        object.__setattr__(self, "_number", number)
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "_callable", is_callable)

    def __call__(self, *args, **kwargs):
        return self._remote.request(op="call", handle=self._number, args=args, kwargs=kwargs)

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):  # copy, pickle and friends probe these
            raise AttributeError(name)
        return self._remote.request(op="getattr", handle=self._number, name=name)

    def __len__(self):
        return self._remote.request(op="getattr", handle=self._number, name="__len__")()

    def __getitem__(self, key):
        return self._remote.request(op="getattr", handle=self._number, name="__getitem__")(key)

    def __reduce__(self):  # passed back as an argument: the kernel looks the object up
        return (kernel_side.resolve, (self._number,))

    def __repr__(self):
        return f"<{self._kind} in the student's kernel>"
