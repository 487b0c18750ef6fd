"""What keeps one student notebook from harming the grading of the others: process limits and clean-up.

    grader (grade.py) ── subreaper ──> worker (worker.py, one per notebook, its own session, subreaper)
                                          └─> [python sandbox.py MEMORY FILE --] rlimits, then exec
                                              [unshare --user --net --]          no network, then exec
                                              kernel (the student's code)
                                                 └─> anything the notebook starts (sleep 300, a daemon...)

- subreaper (Linux, prctl PR_SET_CHILD_SUBREAPER): a process the notebook starts and abandons, even in a
  new session (`start_new_session=True`) or by a double fork, becomes the worker's child, not init's;
  when the notebook ends the worker kills every descendant it has, and when the worker itself is killed
  its descendants become the grader's children, which the grader kills.
- limits (`resource.setrlimit`, POSIX, set by this file run as a script before it execs the kernel, and
  inherited by all the kernel starts): the address space of each process (MemoryError instead of the
  machine's out-of-memory killer), the size of any one file written, no core files. The worker itself
  is not limited: it must survive its notebook.
- network (Linux with unprivileged user namespaces and `unshare` from util-linux): the kernel runs in a
  network namespace of its own with no interface but a loopback that is down, and talks to the worker
  over Unix sockets; elsewhere the network is NOT cut (labs/README.md says what to do).

On macOS and Windows there is no subreaper: processes a notebook starts in a new session can outlive
grading (the kernel itself is still shut down). On Windows there are no rlimits either: no memory cap.
Each of these degrades to "not enforced", never to an error.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import signal
import subprocess
import sys

PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 36, 37
LINUX = sys.platform.startswith("linux")


def _prctl(option: int, value) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(option, value, 0, 0, 0)


def set_subreaper(on: bool = True) -> bool:
    """Make this process adopt its orphaned descendants (Linux); False where that is not possible."""
    if not LINUX:
        return False
    try:
        return _prctl(PR_SET_CHILD_SUBREAPER, int(on)) == 0
    except (OSError, AttributeError):
        return False


def is_subreaper() -> bool:
    if not LINUX:
        return False
    try:
        flag = ctypes.c_int(0)
        return _prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag)) == 0 and flag.value != 0
    except (OSError, AttributeError):
        return False


def _parents() -> dict[int, int]:
    """{pid: parent pid} of every process this user can see (Linux /proc); {} elsewhere."""
    table = {}
    if not LINUX:
        return table
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
                table[int(entry)] = int(stat[stat.rindex(b")") + 2 :].split()[1])  # after "(comm) state"
            except (OSError, ValueError, IndexError):
                pass  # it ended while we looked
    return table


def children(pid: int | None = None) -> set[int]:
    pid = os.getpid() if pid is None else pid
    return {child for child, parent in _parents().items() if parent == pid}


def descendants(pid: int | None = None) -> set[int]:
    pid = os.getpid() if pid is None else pid
    parents, found, frontier = _parents(), set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def kill_processes(roots: set[int], keep: set[int] = frozenset(), rounds: int = 50) -> int:
    """SIGKILL the processes `roots`, all their descendants and every child of ours not in `keep` (orphans
    we adopted as a subreaper), again until none is left: a process that forks while we kill is caught in
    the next round. Reaps those that are our children. Returns how many were signalled."""
    killed: set[int] = set()
    me = os.getpid()
    for _ in range(rounds):
        parents = _parents()
        alive = {pid for pid in roots if pid in parents or not LINUX}
        alive |= {pid for pid, parent in parents.items() if parent == me} - set(keep)
        frontier = set(alive)
        while frontier:
            frontier = {pid for pid, parent in parents.items() if parent in frontier} - alive
            alive |= frontier
        alive -= {me, *keep}
        if not alive:
            break
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in alive:
            try:
                os.waitpid(pid, 0)  # our child (adopted or not): reap it so that no zombie stays
            except ChildProcessError:
                pass
        roots = alive
    return len(killed)


def limit_resources(memory_bytes: int | None, file_bytes: int | None) -> list[str]:
    """Cap this process and all it starts: address space, size of one written file, core files.
    Returns the limits not set (a platform without them, or a hard limit below ours)."""
    try:
        import resource
    except ImportError:  # Windows
        return ["memory", "file size", "core files"]
    missing = []
    for name, limit, what in (("RLIMIT_AS", memory_bytes, "memory"), ("RLIMIT_FSIZE", file_bytes, "file size"),
                              ("RLIMIT_CORE", 0, "core files")):
        if limit is None or not hasattr(resource, name):
            missing += [] if limit is None else [what]
            continue
        kind = getattr(resource, name)
        _, hard = resource.getrlimit(kind)
        limit = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
        try:
            resource.setrlimit(kind, (limit, hard))
        except (ValueError, OSError):
            missing.append(what)
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file over the limit: an OSError, not a killed process
    return missing


@functools.lru_cache(maxsize=1)
def no_network_prefix() -> tuple[str, ...]:
    """The command prefix that starts a program in a network namespace of its own (Linux), or () where this
    machine does not allow it (no `unshare`, unprivileged user namespaces switched off, not Linux)."""
    unshare = shutil.which("unshare") if LINUX else None
    if unshare is None:
        return ()
    for mapping in ("--map-current-user", "--map-root-user"):
        prefix = (unshare, "--user", mapping, "--net", "--")
        try:
            if subprocess.run([*prefix, "true"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=10).returncode == 0:
                return prefix
        except (OSError, subprocess.SubprocessError):
            pass
    return ()


def limited_prefix(memory_bytes: int | None, file_bytes: int | None) -> tuple[str, ...]:
    """The command prefix that runs a program under limit_resources(memory_bytes, file_bytes): this file
    run as a script (standard library only, so it starts at once), which sets the limits and execs."""
    if (memory_bytes is None and file_bytes is None) or unenforced(memory_bytes, file_bytes) == ["memory", "file size", "core files"]:
        return ()
    return (sys.executable, os.path.abspath(__file__), str(memory_bytes or 0), str(file_bytes or 0), "--")


def unenforced(memory_bytes: int | None, file_bytes: int | None) -> list[str]:
    """The limits asked for that this platform does not enforce (no `resource` on Windows; macOS ignores
    RLIMIT_AS)."""
    try:
        import resource  # noqa: F401
    except ImportError:
        return ["memory", "file size", "core files"]
    return ["memory"] if memory_bytes and sys.platform == "darwin" else []


if __name__ == "__main__":  # python sandbox.py MEMORY_BYTES FILE_BYTES -- PROGRAM ARGS...
    limit_resources(int(sys.argv[1]) or None, int(sys.argv[2]) or None)
    os.execvp(sys.argv[4], sys.argv[4:])

