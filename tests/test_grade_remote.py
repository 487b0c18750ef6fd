"""The grader's checker sees the student's answer through remote.py: data crosses as data only, functions,
classes and objects are called where they live, and no verdict changes on the way.

The kernel side runs in this process here (kernel_side.serve on a namespace dict, the same files and
the same torch.save / torch.load(weights_only=True) as with a real kernel), so these tests are fast;
tests/test_grade_sandbox.py grades real notebooks in real kernels.
"""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from qvl_minimal.labs import EXERCISES, kernel_side
from qvl_minimal.labs.core import load_chapter, run_checker
from qvl_minimal.labs.remote import Remote, RemoteError, RemoteObject, load_data


def remote_in(namespace: dict, folder) -> Remote:
    """A Remote whose 'kernel' is `namespace` in this process."""
    return Remote(lambda source: kernel_side.serve(str(folder), namespace), folder)


def test_data_crosses_as_data(tmp_path):
    from collections import namedtuple

    Pair = namedtuple("Pair", "a b")
    answer = {"t": torch.arange(6).view(2, 3)[:, 1:], "r": range(3), "s": {1, 2}, "f": frozenset({3}),
              "p": Pair(1, 2.5), "d": torch.float16, "size": torch.Size([2]), "none": None, "c": 1 + 2j}
    got = remote_in({"answer": answer}, tmp_path).fetch("answer")
    assert got.keys() == answer.keys()
    assert torch.equal(got["t"], answer["t"]) and got["t"].dtype == torch.long
    assert got["r"] == range(3) and got["s"] == {1, 2} and got["f"] == frozenset({3}) and got["d"] == torch.float16
    assert type(got["p"]) is tuple and got["p"] == (1, 2.5)  # a namedtuple arrives as its base type
    assert remote_in({"x": ...}, tmp_path).fetch("x") is Ellipsis  # the stub's `answer = ...`


def test_functions_classes_and_objects_stay_in_the_kernel(tmp_path):
    class Counter:
        def __init__(self, start):
            self.count = start

        def add(self, tensor):
            self.count += int(tensor.sum())
            return self.count, tensor * 2

    namespace = {"Counter": Counter, "double": lambda x: x * 2}
    remote = remote_in(namespace, tmp_path)
    double = remote.fetch("double")
    assert isinstance(double, RemoteObject) and torch.equal(double(torch.ones(2)), torch.full((2,), 2.0))
    counter = remote.fetch("Counter")(5)  # an instance: it stays in the 'kernel'
    assert isinstance(counter, RemoteObject) and counter.count == 5
    total, doubled = counter.add(torch.ones(3))
    assert total == 8 and counter.count == 8 and torch.equal(doubled, torch.full((3,), 2.0))
    assert remote.fetch("Counter")(counter).count is not None  # a proxy passed back is the kernel's object
    assert "Counter in the student's kernel" in repr(counter)


def test_exceptions_come_back_by_name(tmp_path):
    def stub(x):
        raise NotImplementedError()

    class Mine(Exception):
        pass

    def custom(x):
        raise Mine("oops")

    remote = remote_in({"stub": stub, "bad": lambda x: int("x"), "custom": custom}, tmp_path)
    with pytest.raises(NotImplementedError):  # "not attempted" is told by this
        remote.fetch("stub")(1)
    with pytest.raises(ValueError, match="invalid literal"):  # a checker that expects ValueError still gets it
        remote.fetch("bad")(1)
    with pytest.raises(RemoteError, match="Mine: oops"):
        remote.fetch("custom")(1)
    with pytest.raises(NameError):  # a quiz whose stub left the name undefined
        remote.fetch("undefined_answer")


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo owned > owned.txt",))


def test_a_reply_that_is_code_is_refused(tmp_path):
    reply = tmp_path / "response.pt"
    with open(reply, "wb") as f:
        pickle.dump({"value": _Boom()}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        load_data(reply)
    torch.save({"value": _Boom()}, reply)
    with pytest.raises(pickle.UnpicklingError):
        load_data(reply)
    assert not (tmp_path / "owned.txt").exists() and not os.path.exists("owned.txt")


# ---------------------------------------------------------------- the same verdict through the proxy

def _verdict(exercise_id, answer):
    try:
        return run_checker(EXERCISES[exercise_id], answer)
    except (AssertionError, NotImplementedError) as e:
        return f"{type(e).__name__}: {e}"


def _cases():
    """(id, answer) pairs that other tests check directly: right and wrong answers of every kind."""
    import test_labs_ch00_03 as early

    cases = list(early.SOLUTIONS.items()) + [(i, wrong) for i, (wrong, *_rest) in early.WRONG.items()]
    from qvl_minimal.text import KVCache

    return cases + [("09.1", KVCache)]  # a class, whose instances the checker drives by their methods


@pytest.mark.parametrize("exercise_id, answer", _cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_the_proxy_changes_no_verdict(exercise_id, answer, tmp_path):
    """Every answer gets the same line (PASS or the AssertionError's message) checked directly and
    checked through the proxy: the existing checkers work unchanged on answers that live in a kernel."""
    load_chapter(exercise_id[:2])
    direct = _verdict(exercise_id, answer)
    proxied = _verdict(exercise_id, remote_in({"answer": answer}, tmp_path).fetch("answer"))
    assert proxied == direct


def test_the_answer_is_what_the_check_cell_names():
    from qvl_minimal.labs.worker import answer_expression

    assert answer_expression('%time\ncheck("04.1", window_index_mine)', "04.1") == "window_index_mine"
    assert answer_expression('check("04.3", (a, b + 1))  # a quiz', "04.3") == "(a, b + 1)"
    assert answer_expression('check("04.1", window_index_mine)', "04.2") is None  # another exercise's cell
    assert answer_expression('print("PASS 04.1")', "04.1") is None  # no check: the grader fails it


def test_an_exercise_the_grader_does_not_know_fails(tmp_path):
    from qvl_minimal.labs.worker import FAIL, grade_check

    status, message = grade_check(remote_in({"x": 1}, tmp_path), 'check("97.1", x)', "97.1", stub_raised=False)
    assert status == FAIL and "no checker for 97.1" in message
