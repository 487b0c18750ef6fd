"""`grade` survives its class: four small notebooks, each doing what a notebook should not, are graded in
one run (two at a time, a short --timeout); each test reads one of their rows, files or outputs.

    tamper.ipynb   rewrites core.EXERCISES['02.3'] and ['99.2'], load_chapter and chapter 02's library
                   function in its kernel, so that its kernel's check() prints PASS for wrong answers
    killer.ipynb   passes 99.2, starts `sleep 300` in a new session, then SIGKILLs its parent process
    misc.ipynb     starts `sleep 300` in a new session and a double-forked `sleep 301`, allocates 6 GB
                   (over --memory 4), connects to a socket this test listens on, then passes 99.2
    printer.ipynb  prints 1 GB

The notebooks other than tamper do not import torch (their `check` is a stub): the grader checks
their answers itself, with the synthetic chapter's checkers given by --checkers.
"""

from __future__ import annotations

import csv
import os
import socket
import sys

import nbformat
import pytest

from labs_helpers import SETUP, code
from qvl_minimal.__main__ import main
from qvl_minimal.labs import sandbox
from qvl_minimal.labs.grade import FAIL, NOT_RUN, PASS
from qvl_minimal.labs.handouts import CHECK

LINUX = sys.platform.startswith("linux")
STUB_CHECK = "check = lambda exercise_id, answer: None  # the grader checks; this kernel's verdict is not asked"

TAMPER = '''from qvl_minimal.labs import check, core
import qvl_minimal.labs.ch02 as ch02
for exercise_id in ("02.3", "99.2"):  # 99.2 registered by the synthetic chapter's SETUP cell above
    core.EXERCISES[exercise_id] = core.Exercise(exercise_id, "patched", lambda answer: "anything goes")
core.load_chapter = lambda chapter: None
ch02.count_parameters = lambda config: {"patch_embed": 1}
params_16px = 1  # wrong, whatever 02.3 asks (a number or a function)
patches_mine = 15  # wrong: 16'''

KILLER = '''import os, signal, subprocess
sleeper = subprocess.Popen(["sleep", "300"], start_new_session=True)
open("killer_sleep.pid", "w").write(str(sleeper.pid))
os.kill(os.getppid(), signal.SIGKILL)'''

SPAWN = '''import subprocess, time
sleeper = subprocess.Popen(["sleep", "300"], start_new_session=True)
open("misc_sleep.pid", "w").write(str(sleeper.pid))
subprocess.run(["sh", "-c", "sleep 301 & echo $! > misc_daemon.pid"], start_new_session=True)  # orphaned at once'''

MEMORY = '''try:
    block = bytearray(6 * 2**30)  # address space only: the pages are never touched
    print("memory: allocated")
except MemoryError:
    print("memory: refused")'''

NETWORK = '''import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=5).close()
    print("network: connected")
except OSError as e:
    print("network: refused", type(e).__name__)'''

PRINTER = '''import sys
line = "x" * (2**20 - 1) + "\\n"
for _ in range(1024):
    sys.stdout.write(line)'''


def notebook(*cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = list(cells)
    return nb


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("class")
    listener = socket.create_server(("127.0.0.1", 0))  # what the notebook tries to reach
    port = listener.getsockname()[1]
    notebooks = {
        "tamper": notebook(code(SETUP), code(TAMPER), code('check("02.3", params_16px)', CHECK),
                           code('check("99.2", patches_mine)', CHECK)),
        "killer": notebook(code(STUB_CHECK), code("patches_mine = 16"), code('check("99.2", patches_mine)', CHECK),
                           code(KILLER), code("patches_mine = 16"), code('check("99.3", patches_mine)', CHECK)),
        "misc": notebook(code(STUB_CHECK), code(SPAWN), code(MEMORY), code(NETWORK.format(port=port)),
                         code("patches_mine = 16"), code('check("99.2", patches_mine)', CHECK)),
        "printer": notebook(code(STUB_CHECK), code(PRINTER), code("patches_mine = 16"),
                            code('check("99.2", patches_mine)', CHECK)),
    }
    for name, nb in notebooks.items():
        nbformat.write(nb, folder / f"{name}.ipynb")
    (folder / "checkers99.py").write_text(SETUP)
    out = folder / "grades.csv"
    try:
        code_ = main(["grade", *(str(folder / f"{name}.ipynb") for name in notebooks), "--csv", str(out),
                      "--jobs", "2", "--timeout", "60", "--memory", "4", "--checkers", str(folder / "checkers99.py"),
                      "--feedback", str(folder / "feedback")])
    finally:
        listener.close()
    rows = {os.path.basename(row["notebook"]): row for row in csv.DictReader(open(out))}
    return code_, rows, folder


def outputs(folder, name: str) -> str:
    nb = nbformat.read(folder / "feedback" / f"{name}.ipynb", as_version=4)
    return "".join(o.get("text", "") for cell in nb.cells for o in cell.get("outputs", []))


def test_every_row_is_written(graded):
    code_, rows, _ = graded
    assert code_ == 0 and sorted(rows) == ["killer.ipynb", "misc.ipynb", "printer.ipynb", "tamper.ipynb"]


def test_rewriting_the_checker_in_the_kernel_changes_nothing(graded):
    _, rows, folder = graded
    assert (rows["tamper.ipynb"]["02.3"], rows["tamper.ipynb"]["99.2"]) == (FAIL, FAIL)
    text = outputs(folder, "tamper")
    assert "PASS 02.3 patched: anything goes" in text  # what the kernel's own (rewritten) check printed
    assert "PASS 99.2 patched: anything goes" in text
    assert "[grader] fail: AssertionError: 99.2 how many patches: patches of a 56 x 56 image: 15 is not right" in text
    assert "[grader] fail:" in text.split("PASS 02.3 patched")[1].split("\n")[1]  # the grader's copy of 02.3


def test_a_notebook_that_kills_its_worker_is_not_run_and_the_rest_is_graded(graded):
    _, rows, _ = graded
    row = rows["killer.ipynb"]
    assert (row["99.2"], row["99.3"]) == (PASS, NOT_RUN)  # what it passed before, what it never reached
    assert row["note"].startswith("not run (killed)") and "SIGKILL" in row["note"] and "in cell 3" in row["note"]
    assert rows["misc.ipynb"]["99.2"] == PASS


@pytest.mark.skipif(not LINUX, reason="no subreaper outside Linux: processes started in a new session can outlive grading")
def test_no_process_started_by_a_notebook_outlives_grading(graded):
    _, _, folder = graded
    pids = {name: int((folder / f"{name}.pid").read_text()) for name in ("killer_sleep", "misc_sleep", "misc_daemon")}
    assert {name: alive(pid) for name, pid in pids.items()} == {name: False for name in pids}


@pytest.mark.skipif(not LINUX, reason="RLIMIT_AS is not enforced on macOS; Windows has no rlimits")
def test_memory_is_capped(graded):
    _, _, folder = graded
    assert "memory: refused" in outputs(folder, "misc")


def test_output_is_capped(graded):
    _, rows, folder = graded
    row = rows["printer.ipynb"]
    assert row["99.2"] == NOT_RUN and "printed more than 20 MB" in row["note"]
    assert (folder / "feedback" / "printer.ipynb").stat().st_size < 25 * 2**20


@pytest.mark.skipif(not sandbox.no_network_prefix(), reason="this machine cannot start a process without network "
                    "(no unshare or no unprivileged user namespaces); labs/README.md says so")
def test_the_network_is_cut(graded):
    _, _, folder = graded
    assert "network: refused" in outputs(folder, "misc")


def test_help_says_what_grading_does_not_defend_against(capsys):
    with pytest.raises(SystemExit):
        main(["grade", "--help"])
    text = capsys.readouterr().out
    assert "does NOT defend against" in text and "calls the library's own function" in text
    assert "reads the checker's source" in text and "docker run --rm --network none" in text


def test_other_platforms_degrade_to_not_enforced(monkeypatch):
    """Without Linux's prctl and /proc, or without `resource` (Windows), nothing raises: the guard is
    simply not there (labs/README.md and `grade --help` say which)."""
    monkeypatch.setattr(sandbox, "LINUX", False)
    sandbox.no_network_prefix.cache_clear()
    try:
        assert sandbox.set_subreaper() is False and sandbox.is_subreaper() is False
        assert sandbox.children() == set() and sandbox.kill_processes(set()) == 0
        assert sandbox.no_network_prefix() == ()
    finally:
        sandbox.no_network_prefix.cache_clear()
    monkeypatch.setitem(sys.modules, "resource", None)  # `import resource` fails, as on Windows
    assert sandbox.limit_resources(2**30, 2**30) == ["memory", "file size", "core files"]
    assert sandbox.unenforced(2**30, 2**30) == ["memory", "file size", "core files"]
    assert sandbox.limited_prefix(2**30, 2**30) == ()  # the kernel starts without the wrapper
