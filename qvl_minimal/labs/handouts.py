"""Student handouts: `python -m qvl_minimal handouts [NN ...] [--out labs/handouts]`.

    chapters/NN_*.ipynb (the solution version, run under strict nbval)
        -> every `### BEGIN SOLUTION` ... `### END SOLUTION` region of a cell tagged `exercise`
           becomes `# YOUR CODE HERE` + `raise NotImplementedError()` at the region's indentation
        -> cells tagged `solution` are dropped; outputs, execution counts and timings are cleared
        -> a note on top says it is a handout, lists its exercises and how to check them
        -> labs/handouts/NN_*.ipynb, one per chapter that has exercises

Malformed markers in code cells (BEGIN without END, END without BEGIN, nested regions, a marker with
other text on its line, markers in a cell not tagged `exercise`, an `exercise` code cell with no
region) raise MarkerError naming the notebook and cell: a handout is never written with an answer in it.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

from ..website import chapter_notebooks  # the book's notebooks in reading order, one rule for both

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
EXERCISE, CHECK, SOLUTION = "exercise", "check", "solution"  # the cell tags of the convention
CHECK_CALL = re.compile(r"""\bcheck\(\s*["'](\d\d\.\d+)["']""")
NOTE_ID = "lab-handout-note"
DEFAULT_OUT = Path("labs/handouts")


class MarkerError(ValueError):
    """The solution markers of a chapter are malformed; the message names the cell and the fix."""


def tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def solution_regions(source: str, where: str) -> list[tuple[int, int]]:
    """(begin, end) line numbers of each solution region of a cell's source, validated."""
    regions, begin = [], None
    for number, line in enumerate(source.split("\n")):
        stripped = line.strip()
        is_begin, is_end = "BEGIN SOLUTION" in stripped, "END SOLUTION" in stripped
        if not (is_begin or is_end):
            continue
        if stripped not in (BEGIN, END):
            raise MarkerError(f"{where}, line {number + 1}: {stripped!r}: write the marker alone on its line, "
                              f"exactly {BEGIN!r} or {END!r}")
        if stripped == BEGIN:
            if begin is not None:
                raise MarkerError(f"{where}, line {number + 1}: {BEGIN!r} inside the region opened on line "
                                  f"{begin + 1}: regions cannot nest; close the first with {END!r}")
            begin = number
        else:
            if begin is None:
                raise MarkerError(f"{where}, line {number + 1}: {END!r} without a {BEGIN!r} before it")
            regions.append((begin, number))
            begin = None
    if begin is not None:
        raise MarkerError(f"{where}, line {begin + 1}: {BEGIN!r} is never closed: add {END!r} after the solution")
    return regions


def strip_solutions(source: str, where: str = "cell") -> tuple[str, int]:
    """The cell's source with each solution region replaced by the stub; and the number of stubs."""
    lines = source.split("\n")
    regions = solution_regions(source, where)
    for begin, end in reversed(regions):
        indent = lines[begin][: len(lines[begin]) - len(lines[begin].lstrip())]
        lines[begin : end + 1] = [indent + stub for stub in STUB]
    return "\n".join(lines), len(regions)


def check_ids(nb) -> list[str]:
    """The exercise ids of a notebook, in order, from its check cells (`check("04.1", ...)`)."""
    ids = []
    for cell in nb.cells:
        if CHECK in tags(cell):
            found = CHECK_CALL.search(cell.source)
            ids.append(found.group(1) if found else None)
    return ids


def validate(nb, name: str) -> None:
    """Raise MarkerError where a cell breaks the convention in a way that would leak or lose an answer."""
    ids = []
    for index, cell in enumerate(nb.cells):
        where, cell_tags = f"{name}, cell {index} (id {cell.get('id')})", tags(cell)
        regions = solution_regions(cell.source, where) if cell.cell_type == "code" else []  # prose may name them
        if regions and EXERCISE not in cell_tags:
            raise MarkerError(f"{where}: solution markers in a cell not tagged {EXERCISE!r}; tag it, or remove the "
                              f"markers (a solution-only cell is tagged {SOLUTION!r} and dropped whole)")
        if EXERCISE in cell_tags and SOLUTION in cell_tags:
            raise MarkerError(f"{where}: tagged both {EXERCISE!r} and {SOLUTION!r}; keep one")
        if EXERCISE in cell_tags and cell.cell_type == "code" and not regions:
            raise MarkerError(f"{where}: an {EXERCISE!r} cell with no {BEGIN!r} ... {END!r} region: the handout "
                              f"would show the whole answer")
        if CHECK in cell_tags:
            found = CHECK_CALL.search(cell.source)
            if found is None:
                raise MarkerError(f'{where}: a {CHECK!r} cell must call check("CC.N", answer)')
            if found.group(1) in ids:
                raise MarkerError(f"{where}: exercise {found.group(1)} is checked twice in this notebook")
            ids.append(found.group(1))


def exercise_titles(ids: list[str]) -> dict[str, str]:
    """Titles from the checkers' registry (qvl_minimal/labs/chNN.py); '' where there is none."""
    from .core import EXERCISES, load_chapter

    titles = {}
    for exercise_id in ids:
        try:
            load_chapter(exercise_id[:2])
        except KeyError:
            pass
        titles[exercise_id] = EXERCISES[exercise_id].title if exercise_id in EXERCISES else ""
    return titles


def note(source_name: str, ids: list[str]) -> str:
    chapter = source_name[:2]
    titles = exercise_titles(ids)
    listing = "\n".join(f"- **{i}** {titles[i]}" for i in ids)
    return (f"> **Lab handout, Chapter {chapter}.** This is the student version of `chapters/{source_name}`, "
            f"written by `python -m qvl_minimal handouts`.\n>\n"
            f"> Each exercise cell has a `# YOUR CODE HERE` line followed by `raise NotImplementedError()`: "
            f"replace both with your code, run the cell, then run the check cell under it. It prints "
            f"`PASS {chapter}.N ...` when your code is right; otherwise an `AssertionError` says what differs "
            f"(the shape, the dtype, the first differing index, the largest error) without showing the answer. "
            f"The cells after an exercise use the library's version, so if you are stuck you can run the rest "
            f"of the chapter and come back later.\n>\n"
            f"> To grade the whole notebook (your instructor does the same): "
            f"`python -m qvl_minimal grade {source_name}`\n\n"
            f"Exercises in this notebook:\n\n{listing}\n")


def make_handout(nb, name: str):
    """The student version of chapter notebook `nb` (a copy) and its number of stubs."""
    validate(nb, name)
    handout = nbformat.from_dict(nb)
    cells, stubs = [], 0
    for index, cell in enumerate(handout.cells):
        if SOLUTION in tags(cell):
            continue
        if EXERCISE in tags(cell) and cell.cell_type == "code":
            cell.source, count = strip_solutions(cell.source, f"{name}, cell {index}")
            stubs += count
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
        cells.append(cell)
    ids = check_ids(nb)
    top = nbformat.v4.new_markdown_cell(note(name, ids))
    top["id"] = NOTE_ID
    handout.cells = [top] + cells
    handout.metadata["qvl_lab"] = {"handout_of": f"chapters/{name}", "exercises": ids}
    return handout, stubs


def write_handouts(chapters: Path, out: Path, only: list[str] | None = None) -> list[tuple[Path, int, list[str]]]:
    """One handout per chapter notebook with at least one stub (of chapters `only`, e.g. ["04"], if given):
    [(handout path, stubs, exercise ids)]."""
    made = []
    for path in chapter_notebooks(chapters):
        if only and path.name[:2] not in only:
            continue
        nb = nbformat.read(path, as_version=4)
        handout, stubs = make_handout(nb, path.name)
        if stubs == 0:
            continue
        out.mkdir(parents=True, exist_ok=True)
        nbformat.write(handout, out / path.name)
        made.append((out / path.name, stubs, handout.metadata["qvl_lab"]["exercises"]))
    return made


def exercises_of(nb) -> list[tuple[str, str, int]]:
    """[(id, kind, solution lines)] of a chapter: kind "build" when the student writes inside a function or
    class (an indented region), "quiz" when the answer is assigned at top level."""
    found, kind, lines = [], "quiz", 0
    for cell in nb.cells:
        if EXERCISE in tags(cell) and cell.cell_type == "code":
            source = cell.source.split("\n")
            for begin, end in solution_regions(cell.source, "cell"):
                kind = "build" if source[begin].startswith((" ", "\t")) else kind
                lines += sum(1 for line in source[begin + 1 : end] if line.strip() and not line.strip().startswith("#"))
        if CHECK in tags(cell):
            found_id = CHECK_CALL.search(cell.source)
            if found_id:
                found.append((found_id.group(1), kind, lines))
            kind, lines = "quiz", 0
    return found


def exercise_table(chapters: Path, check_seconds: dict[str, str] | None = None) -> str:
    """The instructor guide's table (markdown), one row per exercise; the last column holds measured
    check times when given (tests compare every other column with the chapters)."""
    check_seconds = check_seconds or {}
    rows = ["| chapter | exercise | what the student writes | kind | solution lines | check time |",
            "|---|---|---|---|---|---|"]
    for path in chapter_notebooks(chapters):
        found = exercises_of(nbformat.read(path, as_version=4))
        titles = exercise_titles([exercise_id for exercise_id, _, _ in found])
        for exercise_id, kind, lines in found:
            rows.append(f"| {path.stem} | {exercise_id} | {titles[exercise_id]} | {kind} | {lines} | "
                        f"{check_seconds.get(exercise_id, '')} |")
    return "\n".join(rows)


def configure(parser) -> None:
    parser.add_argument("only", nargs="*", metavar="NN", help="chapter numbers, e.g. 04 09 (default: every chapter)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the handouts (default labs/handouts)")
    parser.add_argument("--chapters", type=Path, default=Path("chapters"), help="the chapter notebooks (default chapters/)")
    parser.add_argument("--table", action="store_true", help="print the exercise table of the instructor guide instead")


def run(args) -> int:
    import sys

    if not args.chapters.is_dir():
        print(f"error: no folder {args.chapters}; run from the project root or pass --chapters", file=sys.stderr)
        return 2
    if args.table:
        print(exercise_table(args.chapters))
        return 0
    try:
        made = write_handouts(args.chapters, args.out, [f"{int(n):02d}" for n in args.only])
    except MarkerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for path, stubs, ids in made:
        print(f"{path}: {stubs} stubs, checks {', '.join(ids)}")
    if not made:
        print(f"error: no chapter in {args.chapters} has an exercise cell", file=sys.stderr)
        return 1
    return 0
