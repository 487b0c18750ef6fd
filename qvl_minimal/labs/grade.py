"""Grading: `python -m qvl_minimal grade SUBMISSIONS... [--csv grades.csv] [--timeout 300]`.

    each student notebook
        -> executed top to bottom by nbclient in a fresh kernel of this Python environment
           (errors allowed, one time limit for the whole notebook, no network, QVL_STANDIN=1)
        -> every check cell (tag `check`, `check("04.1", ...)`) gets a status:
             pass           its output has the line `PASS 04.1 ...` and no error
             not attempted  it raised NotImplementedError (the stub is still there), or any error
                            after an exercise cell that raised NotImplementedError (a quiz whose stub
                            at top level left the answer undefined, or None)
             fail           anything else: AssertionError (the answer is wrong), another error,
                            no PASS line
             not run        the notebook stopped before this cell: time limit, or the kernel died
        -> a table, one row per notebook, one column per exercise, printed and written as CSV
        -> with --feedback FOLDER, the executed notebooks (errors included), to hand back

The notebooks are executed in memory (with the notebook's folder as working directory) and never
written back. Only the check cells are graded; a student who edits a check cell can fool it, so an
instructor who cares compares the check cells with the handout's.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nbformat

from .handouts import CHECK, CHECK_CALL, EXERCISE, tags

PASS, FAIL, NOT_ATTEMPTED, NOT_RUN = "pass", "fail", "not attempted", "not run"


def _kernel_manager_class():
    """An nbclient kernel manager that starts ipykernel with this very Python (the current environment)."""
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class CurrentEnvSpecs(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                              display_name=f"Python ({sys.executable})", language="python")

    class CurrentEnvKernel(AsyncKernelManager):
        @default("kernel_spec_manager")
        def _kernel_spec_manager_default(self):
            return CurrentEnvSpecs(data_dir=self.data_dir)

    return CurrentEnvKernel


def execute(path: Path, timeout: float):
    """Run the notebook at `path` (errors allowed) within `timeout` seconds: (executed notebook, note)."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # outputs saved by the student are not evidence: only this run counts
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = NotebookClient(nb, kernel_name="python3", allow_errors=True, interrupt_on_timeout=False,
                            kernel_manager_class=_kernel_manager_class(),
                            resources={"metadata": {"path": str(Path(path).parent.resolve())}})
    deadline, note = time.monotonic() + timeout, ""
    client.reset_execution_trackers()
    with client.setup_kernel(stderr=subprocess.DEVNULL):  # the kernel's own warnings are noise in a class table
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            left = deadline - time.monotonic()
            if left < 1:
                return nb, f"timed out after {timeout:g} s, before cell {index}"
            client.timeout = int(left)
            try:
                client.execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
            except CellTimeoutError:
                return nb, f"timed out after {timeout:g} s, in cell {index}"
            except DeadKernelError:
                return nb, f"the kernel died in cell {index} (out of memory?)"
    return nb, note


def _errors(cell) -> list[str]:
    return [out.get("ename", "") for out in cell.get("outputs", []) if out.get("output_type") == "error"]


def _text(cell) -> str:
    return "".join(out.get("text", "") for out in cell.get("outputs", []) if out.get("output_type") == "stream")


def score(nb) -> dict[str, str]:
    """{exercise id: status} for the check cells of an executed notebook, in order."""
    statuses, stub_raised = {}, False
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if EXERCISE in tags(cell):
            stub_raised = stub_raised or "NotImplementedError" in _errors(cell)
        if CHECK not in tags(cell):
            continue
        found = CHECK_CALL.search(cell.source)
        exercise_id = found.group(1) if found else f"cell {cell.get('id')}"
        errors = _errors(cell)
        if cell.get("execution_count") is None and not cell.get("outputs"):
            status = NOT_RUN
        elif not errors and any(line.startswith(f"PASS {exercise_id}") for line in _text(cell).splitlines()):
            status = PASS
        elif "NotImplementedError" in errors or (errors and stub_raised):
            status = NOT_ATTEMPTED
        else:
            status = FAIL
        statuses[exercise_id], stub_raised = status, False
    return statuses


def grade_one(path: Path, timeout: float, feedback: Path | None = None) -> tuple[dict[str, str], str, float]:
    """(statuses, note, seconds) for one submission; a notebook that cannot be read gets a note.
    With `feedback`, the executed notebook (every output and error message) is written there."""
    start = time.monotonic()
    try:
        nb, note = execute(Path(path), timeout)
    except Exception as e:  # unreadable file, kernel that never starts: one row says so, the others still run
        return {}, f"not graded: {type(e).__name__}: {e}".splitlines()[0], time.monotonic() - start
    if feedback is not None:
        feedback.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, feedback)
    statuses = score(nb)
    expected = nb.metadata.get("qvl_lab", {}).get("exercises", [])
    for exercise_id in expected:  # a check cell deleted by the student
        if exercise_id not in statuses:
            statuses[exercise_id] = NOT_ATTEMPTED
            note = (note + "; " if note else "") + f"check cell {exercise_id} is missing"
    return statuses, note, time.monotonic() - start


def grade(paths: list[Path], timeout: float = 300, jobs: int = 1, real_weights: bool = False,
          feedback: Path | None = None) -> list[dict]:
    """One row per submission: {"notebook", <exercise id>: status..., "passed", "note", "seconds"}.
    With `feedback` (a folder), each executed notebook is written there under its name in the table."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if not real_weights:
        os.environ["QVL_STANDIN"] = "1"  # chapter 11 grades on the stand-in checkpoint: same checks, less memory
    copies = [Path(feedback) / name for name in short_names(paths)] if feedback else [None] * len(paths)
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(grade_one, paths, [timeout] * len(paths), copies))
    else:
        results = [grade_one(path, timeout, copy) for path, copy in zip(paths, copies)]
    rows = []
    for path, (statuses, note, seconds) in zip(paths, results):
        passed = sum(status == PASS for status in statuses.values())
        rows.append({"notebook": str(path), **statuses, "passed": f"{passed}/{len(statuses)}", "note": note,
                     "seconds": f"{seconds:.0f}"})
    return rows


def short_names(paths) -> list[str]:
    """The paths relative to their common folder: alice/04_window_attention.ipynb, bob/..."""
    if not paths:
        return []
    folder = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    return [os.path.relpath(os.path.abspath(p), folder) for p in paths]


def columns(rows: list[dict]) -> list[str]:
    ids = []
    for row in rows:
        ids += [key for key in row if key not in ("notebook", "passed", "note", "seconds") and key not in ids]
    def order(exercise_id):  # "04.2" before "04.10"; a check cell without an id last
        chapter, _, number = exercise_id.partition(".")
        return (0, chapter, int(number)) if number.isdigit() else (1, exercise_id, 0)

    return ["notebook", *sorted(ids, key=order), "passed", "seconds", "note"]


def table(rows: list[dict]) -> str:
    """The rows as a plain-text table; an exercise a notebook does not have is left empty."""
    names = columns(rows)
    shown = [{**row, "notebook": name} for row, name in zip(rows, short_names([row["notebook"] for row in rows]))]
    cells = [names] + [[str(row.get(name, "")) for name in names] for row in shown]
    widths = [max(len(line[i]) for line in cells) for i in range(len(names))]
    return "\n".join("  ".join(value.ljust(width) for value, width in zip(line, widths)).rstrip() for line in cells)


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns(rows), restval="")
        writer.writeheader()
        writer.writerows(rows)


def configure(parser) -> None:
    parser.add_argument("submissions", nargs="+", type=Path, help="student notebooks (.ipynb)")
    parser.add_argument("--csv", type=Path, default=Path("labs/grades.csv"), help="where to write the table (default labs/grades.csv)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed per notebook (default 300)")
    parser.add_argument("--jobs", type=int, default=1, help="notebooks graded at once (each kernel takes 0.5-5 GB of memory)")
    parser.add_argument("--feedback", type=Path, default=None,
                        help="write each executed notebook (outputs and error messages) into this folder, to return")
    parser.add_argument("--real-weights", action="store_true",
                        help="let chapter 11 use the real checkpoint if found (default: the stand-in)")


def run(args) -> int:
    missing = [str(p) for p in args.submissions if not p.is_file()]
    if missing:
        print(f"error: no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 2
    rows = grade(args.submissions, args.timeout, args.jobs, args.real_weights, args.feedback)
    print(table(rows))  # notebooks named from their common folder; the CSV keeps the paths as given
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.csv)
    print(f"wrote {args.csv}")
    return 0
