"""Helpers for tests/test_labs.py: a synthetic chapter, filling stubs back, names a cell binds and reads."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat

from qvl_minimal.labs.handouts import CHECK, CHECK_CALL, EXERCISE, SOLUTION, STUB, solution_regions, tags

CHAPTERS = Path(__file__).resolve().parent.parent / "chapters"


def code(source: str, *cell_tags: str):
    cell = nbformat.v4.new_code_cell(source)
    if cell_tags:
        cell.metadata["tags"] = list(cell_tags)
    return cell


def markdown(source: str, *cell_tags: str):
    cell = nbformat.v4.new_markdown_cell(source)
    if cell_tags:
        cell.metadata["tags"] = list(cell_tags)
    return cell


SETUP = '''import torch
from qvl_minimal.labs import assert_answer, assert_tensor_matches, check, exercise

def double_library(x):
    return x * 2

@exercise("99.1", "double a tensor")
def _(double_mine):
    for shape in [(3,), (2, 5)]:
        x = torch.randn(shape)
        assert_tensor_matches(double_mine(x), double_library(x), f"shape {shape}")
    return "2 shapes, exact"

@exercise("99.2", "how many patches")
def _(answer):
    assert_answer(answer, 16, "patches of a 56 x 56 image", hint="divide each side by 14")
    return "right"

@exercise("99.3", "sum of squares")
def _(sum_squares_mine):
    x = torch.randn(7)
    assert_tensor_matches(sum_squares_mine(x), (x * x).sum(), "a vector of 7", atol=1e-6)
    return "exact"'''

DOUBLE = '''def double_mine(x):
    """Return 2 * x."""
    ### BEGIN SOLUTION
    y = x + x
    return y
    ### END SOLUTION'''

PATCHES = '''### BEGIN SOLUTION
patches_mine = (56 // 14) ** 2
### END SOLUTION'''

SQUARES = '''def sum_squares_mine(x):
    ### BEGIN SOLUTION
    return (x * x).sum()
    ### END SOLUTION'''


def synthetic_chapter():
    """A small notebook that follows the convention: 99.1 (a function), 99.2 (a quiz at top level), 99.3."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        markdown("# Chapter 99: a synthetic chapter"),
        code(SETUP),
        markdown("**Exercise 99.1** Write `double_mine(x)`.", EXERCISE),
        code(DOUBLE, EXERCISE),
        code('check("99.1", double_mine)', CHECK),
        markdown("The answer: add the tensor to itself.", SOLUTION),
        code("print(double_mine(torch.ones(2)))", SOLUTION),
        code("print(double_library(torch.ones(2)))  # later cells use the library's version"),
        markdown("**Exercise 99.2** How many 14 x 14 patches does a 56 x 56 image have?"),
        code(PATCHES, EXERCISE),
        code('check("99.2", patches_mine)', CHECK),
        code(SQUARES, EXERCISE),
        code('check("99.3", sum_squares_mine)', CHECK),
        code('print("done")'),
    ]
    return nb


def fill_stubs(handout_source: str, solution_source: str) -> str:
    """Put each solution region (markers included) back in place of its stub, in order."""
    regions = solution_regions(solution_source, "solution")
    solution_lines, lines, out, k, i = solution_source.split("\n"), handout_source.split("\n"), [], 0, 0
    while i < len(lines):
        if (k < len(regions) and lines[i].strip() == STUB[0] and i + 1 < len(lines)
                and lines[i + 1].strip() == STUB[1]):
            begin, end = regions[k]
            out += solution_lines[begin : end + 1]
            k, i = k + 1, i + 2
        else:
            out.append(lines[i])
            i += 1
    assert k == len(regions), f"{len(regions) - k} stubs were not found in the handout"
    return "\n".join(out)


def fill_handout(handout, chapter, ids: set[str] | None = None):
    """A copy of `handout` with the stubs of exercises `ids` (all if None) filled back from `chapter`."""
    filled = nbformat.from_dict(handout)
    solutions = {cell.get("id"): cell.source for cell in chapter.cells}
    for cell, exercise_id in zip(filled.cells, exercise_ids_of_cells(filled)):
        if EXERCISE in tags(cell) and cell.cell_type == "code" and (ids is None or exercise_id in ids):
            cell.source = fill_stubs(cell.source, solutions[cell.get("id")])
    return filled


def exercise_ids_of_cells(nb) -> list[str | None]:
    """For every cell, the id of the next check cell at or after it (the exercise it belongs to)."""
    ids, following = [], None
    for cell in reversed(nb.cells):
        if CHECK in tags(cell):
            found = CHECK_CALL.search(cell.source)
            following = found.group(1) if found else None
        ids.append(following)
    return ids[::-1]


def _parse(source: str) -> ast.Module:
    """Python source of a cell, with IPython magics (% and !) made into `pass`."""
    lines = [re.sub(r"^(\s*)[%!].*$", r"\1pass", line) for line in source.split("\n")]
    return ast.parse("\n".join(lines))


def _top_level_nodes(tree):
    """Every node of a module except the insides of functions, classes, lambdas and comprehensions."""
    scopes = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda,
              ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, scopes):
            stack.extend(ast.iter_child_nodes(node))


def bound_names(source: str) -> set[str]:
    """Names a cell binds at top level (assignments, defs, imports, for/with targets) or mutates (x.a = , x[i] =)."""
    names = set()
    for node in _top_level_nodes(_parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.Attribute, ast.Subscript)) and isinstance(node.ctx, ast.Store):
            base = node
            while isinstance(base, (ast.Attribute, ast.Subscript)):
                base = base.value
            if isinstance(base, ast.Name):
                names.add(base.id)
    return names


def read_names(source: str) -> set[str]:
    return {node.id for node in ast.walk(_parse(source)) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}


def _meaningful(line: str) -> bool:
    line = line.strip()
    return len(line) >= 8 and not line.startswith("#")


def shown_after(chapter, handout, run: int = 3) -> list[tuple[str, list[str]]]:
    """Solution lines that a code cell of the handout after the exercise still shows: [(exercise cell id, lines)].

    Counted: `run` consecutive meaningful lines of a region (the whole region if it is shorter, so a
    one-line quiz answer of 12 characters or more counts alone) appearing one after the other in a later
    code cell: a copied block, not a shared `with torch.no_grad():` or the skeleton of a similar loop.
    Lines the chapter shows before the exercise are the chapter's own build, not a leak.
    """
    order = [cell.get("id") for cell in handout.cells]
    found = []
    for cell in chapter.cells:
        if EXERCISE not in tags(cell) or cell.cell_type != "code" or cell.get("id") not in order:
            continue
        later = [[line.strip() for line in c.source.split("\n")]
                 for c in handout.cells[order.index(cell.get("id")) + 1 :] if c.cell_type == "code"]
        source_lines = cell.source.split("\n")
        for begin, end in solution_regions(cell.source, "cell"):
            lines = [line.strip() for line in source_lines[begin + 1 : end] if _meaningful(line)]
            n = min(run, len(lines))
            if n == 0 or (n == 1 and len(lines[0]) < 12):
                continue
            windows = {tuple(lines[i : i + n]) for i in range(len(lines) - n + 1)}
            shown = {w for other in later for w in windows if any(tuple(other[j : j + n]) == w for j in range(len(other)))}
            if shown:
                found.append((cell.get("id"), sorted(line for w in shown for line in w)))
    return found
