"""Grading: `python -m qvl_minimal grade SUBMISSIONS... [--csv grades.csv] [--timeout 300]`.

    each student notebook
        -> graded by a worker process of its own (worker.py; its own session, a subreaper, rlimits),
           nbclient running the notebook in a fresh kernel of this Python environment, without
           network where the machine allows (sandbox.py)
        -> each check cell's answer is fetched from the kernel and checked by the worker's own copy
           of the checkers (remote.py): pass / fail / not attempted / not run (see worker.py)
        -> a notebook that kills its worker, or runs out of time, gets "not run" for the checks it
           did not reach and a note that says so; the other notebooks are graded as usual
        -> every process a notebook started is killed when its grading ends (Linux)
        -> a table, one row per notebook, one column per exercise, printed and written as CSV (the
           CSV is rewritten after each notebook, so a grading run that is cut short keeps its rows)
        -> with --feedback FOLDER, the executed notebooks (errors and the grader's verdicts included)

The notebooks are executed in memory (with the notebook's folder as working directory) and never
written back. WHAT THIS DOES NOT DEFEND AGAINST is in EPILOG below (and labs/README.md).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import nbformat

from . import sandbox
from .handouts import check_ids
from .worker import FAIL, NOT_ATTEMPTED, NOT_RUN, PASS, execute  # noqa: F401 (the statuses, for callers)

STARTUP_S = 120  # allowed on top of --timeout for the worker to import torch and start the kernel
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
EPILOG = """what grading defends against: a notebook that kills its own process or its parent, rewrites
the checkers in its kernel (qvl_minimal.labs.EXERCISES, a chNN module), prints gigabytes, allocates
more memory than --memory, or leaves processes running (Linux: all are killed, even in a new session).

what it does NOT defend against (run untrusted notebooks in a container, see labs/README.md):
  - a student who calls the library's own function (qvl_minimal.vision.window_index) in the answer,
    or reads the checker's source in qvl_minimal/labs/chNN.py: the answer is then right;
  - the network where this machine does not allow unprivileged user namespaces (macOS, Windows,
    some Linux distributions): a notebook can then open connections;
  - code written to attack the grader: the notebook runs as your user, so it can signal or trace
    the grader's own processes, rewrite files you can write (the installed package), or start
    programs through a service (systemd-run --user, an existing tmux), and fill the disk;
  - on macOS and Windows, processes a notebook starts in a new session can outlive grading; on
    Windows there is no memory limit.
  e.g. docker run --rm --network none --memory 16g --pids-limit 512 --read-only \\
         --tmpfs /tmp -e HOME=/tmp -v "$PWD/submissions:/in:ro" -v "$PWD/out:/out" IMAGE \\
         python -m qvl_minimal grade /in/*.ipynb --csv /out/grades.csv"""


class _Guard:
    """This process as subreaper while it grades: what a killed worker leaves behind becomes our child,
    and is killed when that worker's grading ends. Children we had before grading are left alone."""

    def __init__(self):
        self.lock, self.workers = threading.Lock(), set()
        self.was_subreaper = sandbox.is_subreaper()
        sandbox.set_subreaper(True)
        self.keep = sandbox.children()

    def start(self, argv, **kwargs) -> subprocess.Popen:
        with self.lock:  # not between a worker's start and its entry in self.workers
            proc = subprocess.Popen(argv, **kwargs)
            self.workers.add(proc.pid)
        return proc

    def finished(self, proc: subprocess.Popen) -> None:
        with self.lock:
            self.workers.discard(proc.pid)
            sandbox.kill_processes(set(), keep=self.keep | self.workers)

    def close(self) -> None:
        with self.lock:
            sandbox.kill_processes(set(self.workers), keep=self.keep)
            if not self.was_subreaper:
                sandbox.set_subreaper(False)


def _ended_by(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def _events(stream, events: list, limit: int = 10_000) -> None:
    for number, line in enumerate(stream):
        if number >= limit:
            break
        try:
            event = json.loads(line[:100_000])
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)


def grade_one(path: Path, job: dict, guard: _Guard, env: dict) -> tuple[dict[str, str], str, float]:
    """(statuses, note, seconds) for one submission, graded by a worker process of its own."""
    start = time.monotonic()
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:  # unreadable file: one row says so, the others still run
        return {}, f"not graded: {type(e).__name__}: {e}".splitlines()[0], time.monotonic() - start
    ids = [i for i in check_ids(nb) if i]
    statuses, events = {i: NOT_RUN for i in ids}, []
    with tempfile.TemporaryFile() as errors:
        proc = guard.start([sys.executable, "-m", "qvl_minimal.labs.worker"], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=errors, env=env, start_new_session=True)
        reader = threading.Thread(target=_events, args=(proc.stdout, events), daemon=True)
        reader.start()
        proc.stdin.write(json.dumps({**job, "notebook": str(Path(path).resolve())}).encode())
        proc.stdin.close()
        limit = job["timeout"] + STARTUP_S
        try:
            proc.wait(timeout=limit)
            timed_out = False
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            timed_out = True
        guard.finished(proc)
        reader.join(timeout=10)
        errors.seek(0)
        stderr = errors.read()[-2000:].decode(errors="replace").strip().splitlines()
    done = next((e for e in reversed(events) if e.get("done")), None)
    for event in events:
        if event.get("check") in statuses and event.get("status") in (PASS, FAIL, NOT_ATTEMPTED, NOT_RUN):
            statuses[event["check"]] = event["status"]
    cells = [e["cell"] for e in events if isinstance(e.get("cell"), int)]
    where = f" in cell {cells[-1]}" if cells else " before the first cell"
    if done and done.get("error"):
        return {}, f"not graded: {done['error']}", time.monotonic() - start
    if done:
        unenforced = [str(u) for u in done.get("unenforced") or []]  # e.g. no RLIMIT_AS on this system
        note = "; ".join(filter(None, [str(done.get("note", "")), ("limits not enforced here: " + ", ".join(unenforced)) if unenforced else ""]))
    elif timed_out:
        note = f"not run (stopped): the grading worker gave no result within {limit:g} s{where}"
    else:
        note = f"not run (killed): the process grading this notebook ended by {_ended_by(proc.returncode)}{where}"
        if proc.returncode and proc.returncode > 0 and stderr:
            note += f": {stderr[-1]}"
    expected = nb.metadata.get("qvl_lab", {}).get("exercises", [])
    for exercise_id in expected:  # a check cell deleted by the student
        if exercise_id not in statuses:
            statuses[exercise_id] = NOT_ATTEMPTED
            note = (note + "; " if note else "") + f"check cell {exercise_id} is missing"
    return statuses, note, time.monotonic() - start


def grade(paths: list[Path], timeout: float = 300, jobs: int = 1, real_weights: bool = False,
          feedback: Path | None = None, checkers: list[Path] = (), memory_gb: float | None = None,
          network: bool = False, on_rows=None) -> list[dict]:
    """One row per submission: {"notebook", <exercise id>: status..., "passed", "note", "seconds"}.
    With `feedback` (a folder), each executed notebook is written there under its name in the table;
    `on_rows(rows so far)` is called after each notebook (the CLI rewrites the CSV)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, env.get("PYTHONPATH")]))
    if not real_weights:
        env["QVL_STANDIN"] = "1"  # chapter 11 grades on the stand-in checkpoint: same checks, less memory
    if memory_gb is None:
        memory_gb = 24 if real_weights else 12
    job = {"timeout": timeout, "checkers": [str(Path(c).resolve()) for c in checkers], "network": network,
           "memory_bytes": int(memory_gb * 2**30) if memory_gb else None, "file_bytes": 4 * 2**30}
    copies = [Path(feedback) / name for name in short_names(paths)] if feedback else [None] * len(paths)
    results: dict[int, tuple] = {}
    guard, pool = _Guard(), ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        futures = {pool.submit(grade_one, path, {**job, "feedback": str(copy) if copy else None}, guard, env): i
                   for i, (path, copy) in enumerate(zip(paths, copies))}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            if on_rows:
                on_rows(_rows([paths[i] for i in sorted(results)], [results[i] for i in sorted(results)]))
    finally:
        guard.close()  # after Ctrl-C: the workers still running too, so that the threads end at once
        pool.shutdown(wait=True, cancel_futures=True)
    return _rows(paths, [results[i] for i in range(len(paths))])


def _rows(paths, results) -> list[dict]:
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
    import argparse

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = ("Run student notebooks, each in a worker process of its own, and check every answer "
                          "with the grader's own copy of the checkers.")
    parser.epilog = EPILOG
    parser.add_argument("submissions", nargs="+", type=Path, help="student notebooks (.ipynb)")
    parser.add_argument("--csv", type=Path, default=Path("labs/grades.csv"), help="where to write the table (default labs/grades.csv)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed per notebook (default 300)")
    parser.add_argument("--jobs", type=int, default=1, help="notebooks graded at once (each kernel takes 0.5-5 GB of memory)")
    parser.add_argument("--feedback", type=Path, default=None,
                        help="write each executed notebook (outputs and error messages) into this folder, to return")
    parser.add_argument("--real-weights", action="store_true",
                        help="let chapter 11 use the real checkpoint if found (default: the stand-in)")
    parser.add_argument("--checkers", type=Path, action="append", default=[], metavar="FILE.py",
                        help="a Python file of your own @exercise checkers, imported by the grader (repeatable)")
    parser.add_argument("--memory", type=float, default=None, metavar="GB",
                        help="address space allowed to each notebook's processes (default 12, 24 with --real-weights; 0: no limit)")
    parser.add_argument("--allow-network", action="store_true",
                        help="do not cut the kernels' network (by default it is cut where the machine allows)")


def run(args) -> int:
    for kind, paths in (("notebook", args.submissions), ("checker file", args.checkers)):
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            print(f"error: no such {kind}: {', '.join(missing)}", file=sys.stderr)
            return 2
    if args.timeout <= 0 or args.jobs < 1 or (args.memory is not None and args.memory < 0):
        print("error: --timeout must be > 0, --jobs >= 1 and --memory >= 0 (GB)", file=sys.stderr)
        return 2
    if not args.allow_network and not sandbox.no_network_prefix():
        print("note: this machine cannot cut a kernel's network (no unprivileged user namespaces); "
              "see `grade --help` for a container that does", file=sys.stderr)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    done = []

    def save(rows):
        write_csv(rows, args.csv)
        done[:] = rows

    try:
        rows = grade(args.submissions, args.timeout, args.jobs, args.real_weights, args.feedback, args.checkers,
                     args.memory, args.allow_network, on_rows=save)
    except KeyboardInterrupt:  # the workers are killed already (grade's finally)
        print(f"error: interrupted after {len(done)} of {len(args.submissions)} notebooks"
              + (f"; their rows are in {args.csv}" if done else ""), file=sys.stderr)
        return 130
    print(table(rows))  # notebooks named from their common folder; the CSV keeps the paths as given
    write_csv(rows, args.csv)
    print(f"wrote {args.csv}")
    return 0
