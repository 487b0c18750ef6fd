"""One student notebook, graded in a process of its own: `python -m qvl_minimal.labs.worker` (started by grade.py).

    job (JSON on stdin: notebook, time limit, limits, checker files)
        -> this process a subreaper; the kernel and all it starts under rlimits (sandbox.py)
        -> the grader's copy of the checkers imported NOW, before any student code runs
        -> nbclient runs the notebook top to bottom in a fresh kernel (errors allowed, output capped,
           network cut where the machine allows, one time limit for the whole notebook)
        -> after each check cell `check("04.1", answer)`: the answer is fetched from the kernel
           (remote.py) and checked HERE by core.run_checker; what the cell printed counts for nothing
             pass           the grader's checker passed
             not attempted  NotImplementedError (the stub is still there), or any error after an
                            exercise cell that raised NotImplementedError (a quiz left undefined)
             fail           anything else: AssertionError (a wrong answer), another error, no checker
             not run        the notebook stopped before this cell (time limit, dead kernel, output limit)
        -> one JSON line per event on stdout: {"cell": i}, {"check": id, "status", "message"}, {"done", "note"}
        -> every process the notebook started is killed, even those in a new session

The kernel gets /dev/null as stdin, stdout and stderr: the only way its output reaches us is the
Jupyter protocol, where it is counted.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

from . import sandbox
from .core import EXERCISES, load_chapter, run_checker
from .handouts import CHECK, CHECK_CALL, EXERCISE, tags
from .remote import Remote

PASS, FAIL, NOT_ATTEMPTED, NOT_RUN = "pass", "fail", "not attempted", "not run"
MAX_OUTPUT_BYTES = 20 * 2**20  # what one notebook may print in all


class Stopped(Exception):
    """The notebook cannot go on (time limit, dead kernel, output limit); the message is the row's note."""


def _kernel_manager_class(prefix: tuple[str, ...], ipc_base: str | None):
    """An nbclient kernel manager that starts ipykernel with this very Python, after `prefix` (unshare...),
    over Unix sockets under `ipc_base` when given (a kernel without network cannot use TCP)."""
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class CurrentEnvSpecs(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            return KernelSpec(argv=[*prefix, sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                              display_name=f"Python ({sys.executable})", language="python")

    class CurrentEnvKernel(AsyncKernelManager):
        @default("kernel_spec_manager")
        def _kernel_spec_manager_default(self):
            return CurrentEnvSpecs(data_dir=self.data_dir)

        if ipc_base:
            @default("transport")
            def _transport_default(self):
                return "ipc"

            @default("ip")
            def _ip_default(self):
                return ipc_base

    return CurrentEnvKernel


def _size(content) -> int:
    if isinstance(content, (str, bytes)):
        return len(content)
    if isinstance(content, dict):
        return sum(_size(v) for v in content.values())
    if isinstance(content, (list, tuple)):
        return sum(_size(v) for v in content)
    return 8


def _client_class():
    from nbclient import NotebookClient

    class CappedClient(NotebookClient):
        """Stops the kernel once the notebook has printed more than `max_output_bytes` in all."""

        def output(self, outs, msg, display_id, cell_index):
            self.output_bytes = getattr(self, "output_bytes", 0) + _size(msg.get("content"))
            if self.output_bytes > self.max_output_bytes:
                if not getattr(self, "output_stopped", False):
                    self.output_stopped = True
                    pid = getattr(getattr(self.km, "provisioner", None), "pid", None)
                    if pid:
                        os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))
                return None
            return super().output(outs, msg, display_id, cell_index)

    return CappedClient


def answer_expression(source: str, exercise_id: str) -> str | None:
    """The source of `answer` in the cell's `check("04.1", answer)` call, or None."""
    lines = [re.sub(r"^(\s*)[%!].*$", r"\1pass", line) for line in source.split("\n")]  # IPython magics
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "check"
                and len(node.args) == 2 and isinstance(node.args[0], ast.Constant) and node.args[0].value == exercise_id):
            return ast.get_source_segment("\n".join(lines), node.args[1])
    return None


def load_checkers(ids, files=()) -> None:
    """The grader's copy of the checkers: the chapters of `ids` and the instructor's own `files`."""
    for number, file in enumerate(files):
        spec = importlib.util.spec_from_file_location(f"qvl_lab_checkers_{number}", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    for chapter in sorted({i[:2] for i in ids if i}):
        try:
            load_chapter(chapter)
        except KeyError:
            pass  # a chapter with no checker module: its checks fail with "no checker"


def grade_check(remote: Remote, source: str, exercise_id: str, stub_raised: bool) -> tuple[str, str]:
    """(status, message) of one check cell, decided by the grader's own checker."""
    if exercise_id not in EXERCISES:
        return FAIL, f"no checker for {exercise_id} in qvl_minimal/labs (or the files given with --checkers)"
    expression = answer_expression(source, exercise_id)
    if expression is None:
        return FAIL, f'the check cell has no call check("{exercise_id}", answer)'
    try:
        return PASS, run_checker(EXERCISES[exercise_id], remote.fetch(expression))
    except NotImplementedError:
        return NOT_ATTEMPTED, f"{exercise_id}: not attempted (the stub raises NotImplementedError)"
    except Stopped:
        raise
    except Exception as e:
        return (NOT_ATTEMPTED if stub_raised else FAIL), f"{type(e).__name__}: {e}"[:2000]


def _errors(cell) -> list[str]:
    return [out.get("ename", "") for out in cell.get("outputs", []) if out.get("output_type") == "error"]


def execute(path: Path, timeout: float, report=None, network: bool = False, max_output_bytes: int = MAX_OUTPUT_BYTES,
            memory_bytes: int | None = None, file_bytes: int | None = None) -> tuple[object, str, dict[str, str]]:
    """Run and grade the notebook at `path` within `timeout` seconds: (executed notebook, note, {id: status}).
    `report(event)` gets each event as it happens; with network=False the kernel runs without network
    where this machine allows it (sandbox.no_network_prefix); the kernel and all it starts get at most
    `memory_bytes` of address space and write no file over `file_bytes` (sandbox.limited_prefix)."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    report = report or (lambda event: None)
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # outputs saved by the student are not evidence: only this run counts
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    load_checkers([CHECK_CALL.search(c.source).group(1) for c in nb.cells if CHECK in tags(c) and CHECK_CALL.search(c.source)])
    statuses, note, stub_raised, count = {}, "", False, 0
    deadline = time.monotonic() + timeout
    isolated = () if network else sandbox.no_network_prefix()
    prefix = sandbox.limited_prefix(memory_bytes, file_bytes) + isolated
    with tempfile.TemporaryDirectory(prefix="qvl-grade-") as folder:
        client = _client_class()(nb, kernel_name="python3", allow_errors=True, interrupt_on_timeout=False,
                                 shutdown_kernel="immediate",
                                 kernel_manager_class=_kernel_manager_class(prefix, f"{folder}/k" if isolated else None),
                                 resources={"metadata": {"path": str(Path(path).parent.resolve())}})
        client.max_output_bytes = max_output_bytes

        def run(cell, index, **kwargs):
            left = deadline - time.monotonic()
            if left < 1:
                raise Stopped(f"timed out after {timeout:g} s, before cell {index}")
            client.timeout = int(left)
            try:
                client.execute_cell(cell, index, **kwargs)
            except CellTimeoutError:
                raise Stopped(f"timed out after {timeout:g} s, in cell {index}") from None
            except DeadKernelError:
                if getattr(client, "output_stopped", False):
                    raise Stopped(f"stopped in cell {index}: the notebook printed more than "
                                  f"{max_output_bytes / 2**20:g} MB") from None
                raise Stopped(f"the kernel died in cell {index} (out of memory, or the notebook ended it)") from None

        def run_hidden(source):
            cell = nbformat.v4.new_code_cell(source)
            nb.cells.append(cell)
            try:
                run(cell, len(nb.cells) - 1, store_history=False)
            finally:
                nb.cells.pop()
                client.clear_display_id_mapping(len(nb.cells))

        remote = Remote(run_hidden, Path(folder))
        client.reset_execution_trackers()
        with client.setup_kernel(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
            try:
                for index, cell in enumerate(nb.cells):
                    if cell.cell_type != "code":
                        continue
                    report({"cell": index})
                    count += 1
                    run(cell, index, execution_count=count)
                    if EXERCISE in tags(cell):
                        stub_raised = stub_raised or "NotImplementedError" in _errors(cell)
                    found = CHECK_CALL.search(cell.source) if CHECK in tags(cell) else None
                    if found:
                        status, message = grade_check(remote, cell.source, found.group(1), stub_raised)
                        statuses[found.group(1)], stub_raised = status, False
                        cell.outputs.append(nbformat.v4.new_output("stream", name="stdout",
                                                                   text=f"[grader] {status}: {message}\n"))
                        report({"check": found.group(1), "status": status, "message": message})
            except Stopped as e:
                note = str(e)
    for cell in nb.cells:  # the checks the notebook never reached
        found = CHECK_CALL.search(cell.source) if CHECK in tags(cell) else None
        if found and found.group(1) not in statuses:
            statuses[found.group(1)] = NOT_RUN
    return nb, note, statuses


def main() -> int:
    job = json.loads(sys.stdin.read())
    out = sys.stdout

    def report(event):
        out.write(json.dumps(event) + "\n")
        out.flush()

    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    sandbox.set_subreaper()
    missing = sandbox.unenforced(job.get("memory_bytes"), job.get("file_bytes"))
    try:
        load_checkers([], job.get("checkers", []))
        nb, note, _ = execute(Path(job["notebook"]), job["timeout"], report, job.get("network", False),
                              job.get("max_output_bytes", MAX_OUTPUT_BYTES), job.get("memory_bytes"),
                              job.get("file_bytes"))
        if job.get("feedback"):
            Path(job["feedback"]).parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, job["feedback"])
        report({"done": True, "note": note, "unenforced": missing})
    except Exception as e:  # unreadable notebook, kernel that never starts, a broken checker file
        report({"done": True, "error": f"{type(e).__name__}: {e}".splitlines()[0]})
    finally:
        sandbox.kill_processes(set())  # whatever the notebook left behind, in a new session or not
    return 0


if __name__ == "__main__":
    sys.exit(main())
