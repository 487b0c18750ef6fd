"""Course labs: the handouts carry no answer, run as a blank student's notebook, give the chapter back when
their stubs are filled, and `grade` tells pass / fail / not attempted.

The chapter tests run on every numbered chapter (chapters/NN_*.ipynb). The blank handouts are executed
once, two at a time, in separate processes (each kernel is a fresh Python of this environment).
"""

from __future__ import annotations

import csv
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import nbformat
import pytest
import torch

from labs_helpers import (CHAPTERS, SETUP, bound_names, code, exercise_ids_of_cells, fill_handout, fill_stubs,
                          read_names, shown_after, synthetic_chapter)
from qvl_minimal.__main__ import main
from qvl_minimal.labs import assert_answer, assert_tensor_matches, check, exercise
from qvl_minimal.labs.grade import FAIL, NOT_ATTEMPTED, NOT_RUN, PASS, execute
from qvl_minimal.labs.handouts import (BEGIN, CHECK, CHECK_CALL, END, EXERCISE, SOLUTION, MarkerError, check_ids,
                                       exercise_table, make_handout, solution_regions, strip_solutions, tags,
                                       write_handouts)

NUMBERED = sorted(p.name for p in CHAPTERS.glob("[0-9][0-9]_*.ipynb"))
TABLE_BEGIN, TABLE_END = "<!-- exercise table: python -m qvl_minimal handouts --table -->", "<!-- end of the exercise table -->"
GRADED_CHAPTER = "00_tour.ipynb"  # the quickest chapter, a mix of builds and quizzes: graded three times in test_grade_three_submissions


def errors(cell) -> list[str]:
    return [f"{o.ename}: {o.evalue}"[:200] for o in cell.get("outputs", []) if o.output_type == "error"]


def enames(cell) -> set[str]:
    return {o.ename for o in cell.get("outputs", []) if o.output_type == "error"}


# ---------------------------------------------------------------- markers


def test_stub_keeps_the_region_indentation():
    source = "def f(x):\n    '''doc'''\n    ### BEGIN SOLUTION\n    y = x\n\n    return y\n    ### END SOLUTION\n"
    stripped, stubs = strip_solutions(source)
    assert stubs == 1
    assert stripped == "def f(x):\n    '''doc'''\n    # YOUR CODE HERE\n    raise NotImplementedError()\n"


def test_several_regions_in_one_cell_and_at_top_level():
    source = f"a = 1\n{BEGIN}\nanswer = 2\n{END}\nclass C:\n    def g(self):\n        {BEGIN}\n        pass\n        {END}"
    stripped, stubs = strip_solutions(source)
    assert stubs == 2
    assert stripped.split("\n") == ["a = 1", "# YOUR CODE HERE", "raise NotImplementedError()", "class C:",
                                    "    def g(self):", "        # YOUR CODE HERE", "        raise NotImplementedError()"]
    assert fill_stubs(stripped, source) == source  # the inverse used by the chapter tests


@pytest.mark.parametrize("source, says", [
    (f"{BEGIN}\nx = 1", "never closed"),
    (f"x = 1\n{END}", "without"),
    (f"{BEGIN}\n{BEGIN}\nx = 1\n{END}\n{END}", "cannot nest"),
    (f"{BEGIN}  # the answer\nx = 1\n{END}", "alone on its line"),
    (f"## BEGIN SOLUTION\nx = 1\n{END}", "alone on its line"),
])
def test_malformed_markers_are_rejected(source, says):
    with pytest.raises(MarkerError, match=says):
        solution_regions(source, "cell 3")


@pytest.mark.parametrize("cell, says", [
    (code(f"{BEGIN}\nx = 1\n{END}"), "not tagged 'exercise'"),
    (code(f"{BEGIN}\nx = 1\n{END}", SOLUTION), "not tagged 'exercise'"),
    (code("x = 1", EXERCISE), "no '### BEGIN SOLUTION'"),
    (code(f"{BEGIN}\nx = 1\n{END}", EXERCISE, SOLUTION), "tagged both"),
    (code("print(x)", CHECK), "must call check"),
])
def test_cells_that_break_the_convention_stop_the_handout(cell, says):
    nb = synthetic_chapter()
    nb.cells.append(cell)
    with pytest.raises(MarkerError, match=says):
        make_handout(nb, "99_synthetic.ipynb")


def test_synthetic_handout():
    chapter = synthetic_chapter()
    chapter.cells[4].outputs = [nbformat.v4.new_output("stream", text="PASS 99.1 double a tensor: 2 shapes\n")]
    chapter.cells[4].execution_count = 3
    handout, stubs = make_handout(chapter, "99_synthetic.ipynb")
    assert stubs == 3 and check_ids(handout) == ["99.1", "99.2", "99.3"]
    text = nbformat.writes(handout)
    assert "SOLUTION" not in text and "x + x" not in text and "56 // 14" not in text and "PASS 99.1" not in text
    assert all(SOLUTION not in tags(cell) for cell in handout.cells)
    assert all(cell.outputs == [] and cell.execution_count is None for cell in handout.cells if cell.cell_type == "code")
    assert "Lab handout" in handout.cells[0].source and "99.1" in handout.cells[0].source
    assert handout.metadata["qvl_lab"]["exercises"] == ["99.1", "99.2", "99.3"]
    assert len(chapter.cells) == len(handout.cells) + 1  # two solution cells dropped, one note added


# ---------------------------------------------------------------- the checker's messages


def test_tensor_message_names_what_differs_never_the_values():
    expected = torch.tensor([[1234.5, 2.0], [3.0, 4.0]])
    with pytest.raises(AssertionError, match=r"shape \(2,\), expected \(2, 2\)"):
        assert_tensor_matches(torch.zeros(2), expected, "grid")
    with pytest.raises(AssertionError, match="dtype torch.float64, expected torch.float32"):
        assert_tensor_matches(expected.double(), expected, "grid")
    with pytest.raises(AssertionError, match="expected a torch.Tensor, got list"):
        assert_tensor_matches([1.0], expected, "grid")
    wrong = expected.clone()
    wrong[1, 0] += 0.5
    wrong[1, 1] = float("nan")
    with pytest.raises(AssertionError) as info:
        assert_tensor_matches(wrong, expected, "grid (2, 2)", atol=1e-3)
    message = str(info.value)
    assert "2 of 4 values differ" in message and "index (1, 0)" in message and "max error inf" in message
    assert "1234" not in message and "3.5" not in message and "4.0" not in message
    with pytest.raises(AssertionError, match=r"1 of 3 values differ, the first at index \(2,\)"):
        assert_tensor_matches(torch.tensor([0, 1, 7]), torch.tensor([0, 1, 2]), "index")


def test_quiz_message_gives_the_hint_not_the_answer():
    with pytest.raises(AssertionError) as info:
        assert_answer(2690, 2691, "tokens of a 1080p photo", hint="round each side to 28 first")
    assert "2691" not in str(info.value) and "round each side" in str(info.value)
    assert_answer(2.0004, 2.0, "x", tol=1e-3)


def test_check_prints_pass_and_prefixes_failures(capsys):
    @exercise("98.1", "identity")
    def _(mine):
        assert_tensor_matches(mine(torch.arange(3)), torch.arange(3), "arange(3)")
        return "exact"

    check("98.1", lambda x: x)
    assert capsys.readouterr().out == "PASS 98.1 identity: exact\n"
    with pytest.raises(AssertionError, match=r"^98.1 identity: arange\(3\): 3 of 3 values differ"):
        check("98.1", lambda x: x + 1)
    with pytest.raises(AssertionError, match="no answer yet"):
        check("98.1", None)

    def stub(x):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError):  # a grader tells "not attempted" from "wrong" by this
        check("98.1", stub)


# ---------------------------------------------------------------- grading (synthetic chapter)


def _write(nb, path):
    nbformat.write(nb, path)
    return path


def test_grade_synthetic(tmp_path, capsys):
    chapter = synthetic_chapter()
    handout, _ = make_handout(chapter, "99_synthetic.ipynb")
    blank = _write(handout, tmp_path / "blank.ipynb")
    half = fill_handout(handout, chapter, {"99.2"})
    for cell, exercise_id in zip(half.cells, exercise_ids_of_cells(half)):
        if EXERCISE in tags(cell) and exercise_id == "99.1":
            cell.source = cell.source.replace("raise NotImplementedError()", "return x * 3  # wrong")
    half = _write(half, tmp_path / "half.ipynb")
    done = _write(fill_handout(handout, chapter), tmp_path / "done.ipynb")
    checkers = tmp_path / "checkers99.py"  # the grader's copy of the synthetic chapter's checkers
    checkers.write_text(SETUP)
    assert main(["grade", str(blank), str(half), str(done), "--csv", str(tmp_path / "g.csv"), "--jobs", "2",
                 "--feedback", str(tmp_path / "feedback"), "--checkers", str(checkers), "--timeout", "60"]) == 0
    rows = {row["notebook"]: row for row in csv.DictReader(open(tmp_path / "g.csv"))}
    statuses = {name: [rows[str(tmp_path / name)][i] for i in ("99.1", "99.2", "99.3")]
                for name in ("blank.ipynb", "half.ipynb", "done.ipynb")}
    assert statuses == {"blank.ipynb": [NOT_ATTEMPTED] * 3, "half.ipynb": [FAIL, PASS, NOT_ATTEMPTED],
                        "done.ipynb": [PASS] * 3}
    assert rows[str(done)]["passed"] == "3/3"
    assert "not attempted" in capsys.readouterr().out
    returned = nbformat.read(tmp_path / "feedback" / "half.ipynb", as_version=4)  # executed, with the messages
    text = nbformat.writes(returned)
    assert "shape (3,): 3 of 3 values differ" in text  # the kernel's own check, for the student
    assert "[grader] fail: AssertionError: 99.1 double a tensor: shape (3,)" in text  # the verdict that counts


def test_grade_reports_a_broken_notebook_and_goes_on(tmp_path, capsys):
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{ not json")
    assert main(["grade", str(broken), "--csv", str(tmp_path / "g.csv")]) == 0
    row = next(csv.DictReader(open(tmp_path / "g.csv")))
    assert row["passed"] == "0/0" and row["note"].startswith("not graded:")
    assert main(["grade", str(tmp_path / "missing.ipynb")]) == 2
    assert "no such notebook" in capsys.readouterr().err


def test_grade_stops_at_the_time_limit(tmp_path):
    chapter = synthetic_chapter()
    chapter.cells.insert(1, code("import time\ntime.sleep(600)"))  # before anything: the test stays short
    handout, _ = make_handout(chapter, "99_synthetic.ipynb")
    nb, note, statuses = execute(_write(fill_handout(handout, chapter), tmp_path / "slow.ipynb"), timeout=6)
    assert "timed out after 6 s" in note
    assert statuses == {"99.1": NOT_RUN, "99.2": NOT_RUN, "99.3": NOT_RUN}


# ---------------------------------------------------------------- the real chapters


@pytest.fixture(scope="module")
def handouts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("handouts")
    return {path.name: (path, stubs, ids) for path, stubs, ids in write_handouts(CHAPTERS, folder)}


def test_handouts_command(tmp_path, capsys):
    assert main(["handouts", "4", "--out", str(tmp_path), "--chapters", str(CHAPTERS)]) == 0
    assert "stubs" in capsys.readouterr().out and [p.name for p in tmp_path.glob("*.ipynb")] == ["04_window_attention.ipynb"]
    assert main(["handouts", "--out", str(tmp_path / "none"), "--chapters", str(tmp_path / "nowhere")]) == 2


@pytest.mark.parametrize("name", NUMBERED)
def test_handout_has_stubs_and_no_solution(name, handouts):
    chapter = nbformat.read(CHAPTERS / name, as_version=4)
    assert name in handouts, f"{name} has no exercise cell: no handout"
    path, stubs, ids = handouts[name]
    assert stubs >= 2, f"{name}: {stubs} stub(s); every chapter needs at least two exercises"
    assert ids and all(i.startswith(name[:2] + ".") for i in ids), f"{name}: exercise ids {ids} should be {name[:2]}.N"
    text = nbformat.read(path, as_version=4)
    handout_text = "\n".join(cell.source for cell in text.cells if cell.cell_type == "code")  # prose may name markers
    assert "BEGIN SOLUTION" not in handout_text and "END SOLUTION" not in handout_text
    assert all(SOLUTION not in tags(cell) for cell in text.cells)
    assert all(not cell.get("outputs") for cell in text.cells)
    leaked = [f"cell {cell_id}: {lines}" for cell_id, lines in shown_after(chapter, text)]
    assert not leaked, f"{name}: an untagged cell after an exercise shows its solution lines: {leaked}"


@pytest.mark.parametrize("name", NUMBERED)
def test_filled_handout_is_the_chapter(name, handouts):
    """Filling every stub back with its region gives the chapter's code exactly, minus the solution cells.

    This is how we know a student who writes the solution passes every check, without executing the
    filled handouts (another 3 minutes): the chapter itself runs under strict nbval in `pytest`, where
    each check cell's stored `PASS` line is compared with a fresh run (asserted below), and the cells the
    handout drops (tagged `solution`) bind no name that a later cell reads (test_solution_cells_are_not_needed).
    """
    chapter = nbformat.read(CHAPTERS / name, as_version=4)
    filled = fill_handout(nbformat.read(handouts[name][0], as_version=4), chapter)
    kept = [(c.get("id"), c.cell_type, c.source) for c in chapter.cells if SOLUTION not in tags(c)]
    assert [(c.get("id"), c.cell_type, c.source) for c in filled.cells[1:]] == kept
    for cell in chapter.cells:
        if CHECK in tags(cell):
            exercise_id = CHECK_CALL.search(cell.source).group(1)
            stored = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
            assert stored.startswith(f"PASS {exercise_id}") and not errors(cell), \
                f"{name}: check {exercise_id}'s stored output is {stored!r} {errors(cell)}; it must be one PASS line"


@pytest.mark.parametrize("name", NUMBERED)
def test_solution_cells_are_not_needed(name):
    chapter = nbformat.read(CHAPTERS / name, as_version=4)
    problems, bound_by_solution = [], {}
    for index, cell in enumerate(chapter.cells):
        if cell.cell_type != "code":
            continue
        if SOLUTION in tags(cell):
            bound_by_solution.update({n: index for n in bound_names(cell.source)})
            continue
        for n in sorted(read_names(cell.source) & set(bound_by_solution)):
            problems.append(f"cell {index} reads {n!r}, bound (or changed) by solution cell {bound_by_solution[n]}")
        for n in bound_names(cell.source):
            bound_by_solution.pop(n, None)
    assert not problems, f"{name}: the handout drops cells that later cells need: {problems}"


@pytest.mark.parametrize("name", NUMBERED)
def test_each_exercise_is_followed_by_its_check(name):
    chapter = nbformat.read(CHAPTERS / name, as_version=4)
    code_cells = [c for c in chapter.cells if c.cell_type == "code"]
    problems = [f"exercise cell {c.get('id')} is followed by {'no cell' if nxt is None else 'cell ' + str(nxt.get('id'))}"
                f", not a check cell"
                for c, nxt in zip(code_cells, code_cells[1:] + [None])
                if EXERCISE in tags(c) and (nxt is None or not ({CHECK, EXERCISE} & set(tags(nxt))))]
    assert not problems, f"{name}: {problems}"


@pytest.fixture(scope="module")
def blank_runs(handouts):
    """Every handout executed as is (a student who has done nothing), two at a time."""
    os.environ["QVL_STANDIN"] = "1"
    pool = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"))
    futures = {name: pool.submit(_run_to_text, path) for name, (path, _, _) in sorted(handouts.items())}
    yield futures
    pool.shutdown(cancel_futures=True)


def _run_to_text(path):
    os.environ["OMP_NUM_THREADS"] = "1"  # two kernels on two cores: one thread each, no oversubscription
    nb, note, statuses = execute(path, timeout=600)
    return nbformat.writes(nb), note, statuses


@pytest.mark.parametrize("name", NUMBERED)
def test_blank_handout_runs_and_every_check_fails(name, blank_runs):
    if name not in blank_runs:
        pytest.fail(f"{name} has no handout")
    text, note, statuses = blank_runs[name].result()
    assert not note, f"{name}: {note}"
    nb, problems, stub_raised = nbformat.reads(text, as_version=4), [], False
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        raised = enames(cell)
        if EXERCISE in tags(cell):
            stub_raised |= "NotImplementedError" in raised
            if raised - {"NotImplementedError"}:
                problems.append(f"exercise cell {index}: {errors(cell)}")
        elif CHECK in tags(cell):
            ok = raised and (raised <= {"NotImplementedError", "AssertionError"} or (raised == {"NameError"} and stub_raised))
            # NameError: a quiz whose stub at top level left its answer undefined
            if not ok or "PASS" in "".join(o.get("text", "") for o in cell.outputs):
                problems.append(f"check cell {index} ({cell.source.strip()[:40]}) should fail on a stub: {errors(cell) or 'it passed'}")
            stub_raised = False
        elif raised:
            problems.append(f"cell {index} (not an exercise) fails: {errors(cell)}")
    assert not problems, f"{name}, blank handout:\n" + "\n".join(problems)
    assert statuses and set(statuses.values()) <= {NOT_ATTEMPTED, FAIL}, statuses


def test_grade_three_submissions(handouts, tmp_path):
    """`grade` on the blank, half-done and complete handouts of one chapter."""
    name = GRADED_CHAPTER if GRADED_CHAPTER in handouts else sorted(handouts)[0]
    chapter = nbformat.read(CHAPTERS / name, as_version=4)
    path, _, ids = handouts[name]
    handout = nbformat.read(path, as_version=4)
    half_ids = set(ids[: len(ids) // 2])
    paths = [tmp_path / f"{kind}_{name}" for kind in ("blank", "half", "done")]
    _write(handout, paths[0])
    _write(fill_handout(handout, chapter, half_ids), paths[1])
    _write(fill_handout(handout, chapter), paths[2])
    out = tmp_path / "grades.csv"
    assert main(["grade", *map(str, paths), "--csv", str(out), "--jobs", "2"]) == 0
    rows = {row["notebook"]: row for row in csv.DictReader(open(out))}
    for path, done in zip(paths, [set(), half_ids, set(ids)]):
        row = rows[str(path)]
        assert {i: row[i] for i in ids} == {i: PASS if i in done else NOT_ATTEMPTED for i in ids}, path.name
        assert row["passed"] == f"{len(done)}/{len(ids)}" and row["note"] == ""


def test_instructor_guide_table_matches_the_chapters():
    """labs/README.md's exercise table is `python -m qvl_minimal handouts --table` (check times filled by hand)."""
    guide = (CHAPTERS.parent / "labs" / "README.md").read_text()
    begin, end = guide.index(TABLE_BEGIN) + len(TABLE_BEGIN), guide.index(TABLE_END)

    def without_times(table: str) -> list[str]:
        return [row.rsplit("|", 2)[0] for row in table.strip().splitlines()]

    assert without_times(guide[begin:end]) == without_times(exercise_table(CHAPTERS)), \
        "labs/README.md: paste the output of `python -m qvl_minimal handouts --table` between its table markers"
