"""Course labs: exercises checked against the library (`check`), handouts and grading.

    from qvl_minimal.labs import check
    check("04.1", window_index_mine)     # PASS 04.1 ... or an AssertionError saying what differs

core.py holds the checker, chNN.py each chapter's checkers, handouts.py and grade.py the commands
`python -m qvl_minimal handouts` and `python -m qvl_minimal grade` (see labs/README.md, the instructor guide).
"""

from .core import EXERCISES, assert_answer, assert_tensor_matches, check, exercise

__all__ = ["EXERCISES", "assert_answer", "assert_tensor_matches", "check", "exercise"]
