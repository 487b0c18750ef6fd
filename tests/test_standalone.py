"""The book stands on its own: it cites only what a reader of the repository can open.

A reader has the repository and nothing else. So the chapters, the README, pyproject.toml, the
library and the tests may cite the book's own appendix (chapters/appendix.ipynb, "appendix A.4"),
another chapter ("Chapter 05, section 2.4") or a published source (a paper by title / arXiv id),
but never a document that is not in the repository: the developers' notes, a numbered section
sign that points nowhere, an unnamed "article". Four checks:

1. no mention of an absent document (the words are assembled below, so this file does not
   contain them itself);
2. every appendix citation ("appendix A.7", "§A.7") names a heading "## A.7 ..." of the appendix;
3. every "Chapter NN" in the chapters, the READMEs and the library names a chapter that exists;
4. no notebook or test asserts a speed (a time, a speed ratio, a CPU feature): machines differ,
   and the book prints such numbers (masked by the sanitiser) instead of checking them.

Run `python tests/test_standalone.py` for the full list of violations, one per line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ROOT / "chapters"
APPENDIX = CHAPTERS / "appendix.ipynb"
TEXT_SUFFIXES = {".py", ".md", ".toml", ".cfg", ".json", ".yml", ".yaml", ".txt", ".ipynb"}

# Names of documents the reader cannot see. Assembled from pieces so that this file, which is
# scanned too, does not trip over its own list.
_DEV_NOTES = "FA" + "CTS"
ABSENT_DOCUMENTS = [
    ("the developers' notes", re.compile(r"\b" + _DEV_NOTES + r"(?![a-z])")),  # as a name: upper case
    ("the developers' notes", re.compile(r"\bfacts?[ _-]" + "sheet", re.I)),
    ("the developers' notes", re.compile(_DEV_NOTES + r"\.md", re.I)),
    ("a folder outside the repository", re.compile(re.escape("../" + "shared") + r"|shared/" + "reference")),
    ("an unnamed article", re.compile(r"\bseed[ _-]" + "article", re.I)),
    ("a section sign with a bare number", re.compile("\u00a7" + r"\s*\d")),
]
APPENDIX_CITATION = re.compile(r"(?:\bappendix|\u00a7)\s*,?\s*(?:section\s+)?A\.(\d+)", re.I)
CHAPTER_CITATION = re.compile(r"\bchapters?\s+(\d{1,2})\b", re.I)
SPEED_WORD = r"\w*(?:elapsed|gflops|speedup|tokens_per_s|per_token|load_time)\w*"
SPEED_ASSERT = re.compile(  # an assert that compares a time or a speed, or reads a CPU feature
    r"^\s*assert\b.*("
    r"perf_counter\(|monotonic\(|"  # any timer inside an assertion
    r"\b" + SPEED_WORD + r"(\[[^\]]*\])?\s*[<>]|"  # speed < ...
    r"[<>]=?\s*[\d.]*\s*\*?\s*" + SPEED_WORD + r"|"  # ... > speed
    r"\b(bf16|fp32|bfloat16|float32)_?(time|speed|ms|s)?\s*[<>]|"  # bf16 > 2 * fp32
    r"[<>]=?\s*[\d.]*\s*\*?\s*(bf16|fp32)\b|"
    r"_is_avx|cpu_capability"
    r")"
)


def _notebook_sources(path: Path) -> list[tuple[str, str, str]]:
    """(where, cell type, source) for every cell of a notebook (outputs are not scanned)."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [(f"cell {i}", cell["cell_type"], "".join(cell["source"])) for i, cell in enumerate(cells)]


def book_files() -> list[Path]:
    """Every file a reader gets: chapters, READMEs, pyproject, environment, library, tests, figures, labs."""
    files = sorted(CHAPTERS.glob("*.ipynb")) + sorted(ROOT.glob("*.md")) + sorted(CHAPTERS.glob("*.py"))
    files += [p for p in (ROOT / "pyproject.toml", ROOT / "environment.yml") if p.exists()]
    for folder in ("qvl_minimal", "tests", "figures", "labs"):
        files += sorted(p for p in (ROOT / folder).rglob("*")
                        if p.is_file() and p.suffix in TEXT_SUFFIXES and not p.name.startswith(".")
                        and not {"__pycache__", "handouts"} & set(p.parts))  # handouts: generated from the chapters
    return files


def texts(path: Path) -> list[tuple[str, str, str]]:
    """(where, kind, text) pieces of one file: a notebook per cell, any other file whole."""
    if path.suffix == ".ipynb":
        return _notebook_sources(path)
    kind = "code" if path.suffix == ".py" else "text"
    return [("", kind, path.read_text(encoding="utf-8", errors="replace"))]


def _lines(path: Path):
    """(location, kind, line) for every line of the file's sources."""
    rel = path.relative_to(ROOT).as_posix()
    for where, kind, text in texts(path):
        for number, line in enumerate(text.splitlines(), 1):
            yield f"{rel}:{where + ' ' if where else ''}line {number}", kind, line


def appendix_sections() -> set[int]:
    """N of every markdown heading '## A.N Title' in the appendix."""
    if not APPENDIX.exists():
        return set()
    headings = set()
    for _, kind, source in _notebook_sources(APPENDIX):
        if kind == "markdown":
            headings |= {int(n) for n in re.findall(r"^##\s+A\.(\d+)\s+\S", source, re.M)}
    return headings


def chapter_numbers() -> set[int]:
    return {int(p.name[:2]) for p in CHAPTERS.glob("[0-9][0-9]_*.ipynb")}


def absent_document_mentions() -> list[str]:
    found = []
    for path in book_files():
        for where, _, line in _lines(path):
            for what, pattern in ABSENT_DOCUMENTS:
                if pattern.search(line):
                    found.append(f"{where}: {what}: {line.strip()[:120]}")
    return found


def broken_appendix_citations() -> list[str]:
    """Appendix sections cited anywhere; inside the appendix a bare "A.5" counts as a citation too."""
    sections, found = appendix_sections(), []
    for path in book_files():
        pattern = re.compile(r"\bA\.(\d+)\b") if path == APPENDIX else APPENDIX_CITATION
        for where, _, line in _lines(path):
            for n in pattern.findall(line):
                if int(n) not in sections:
                    found.append(f"{where}: appendix A.{n} has no heading '## A.{n} ...': {line.strip()[:120]}")
    return found


def broken_chapter_citations() -> list[str]:
    """Chapter numbers named in the book and the library (tests may build synthetic chapters)."""
    chapters, found = chapter_numbers(), []
    for path in (p for p in book_files() if "tests" not in p.relative_to(ROOT).parts):
        for where, _, line in _lines(path):
            for n in CHAPTER_CITATION.findall(line):
                if int(n) not in chapters:
                    found.append(f"{where}: there is no chapter {n}: {line.strip()[:120]}")
    return found


def speed_assertions() -> list[str]:
    found = []
    scanned = sorted(CHAPTERS.glob("*.ipynb")) + sorted((ROOT / "tests").rglob("*.py"))
    for path in (p for p in scanned if p.resolve() != Path(__file__).resolve()):  # not this file's examples
        for where, kind, line in _lines(path):
            if kind == "code" and SPEED_ASSERT.search(line):
                found.append(f"{where}: asserts a speed (print it masked instead): {line.strip()[:120]}")
    return found


def _fail_on(found: list[str], what: str) -> None:
    assert not found, f"{len(found)} {what}:\n" + "\n".join(found)


def test_the_appendix_has_sections_a1_to_a9():
    assert APPENDIX.exists(), "chapters/appendix.ipynb is missing: the book's citations point into it"
    missing = set(range(1, 10)) - appendix_sections()
    assert not missing, f"the appendix lacks the headings ## A.N for N in {sorted(missing)}"


def test_no_mention_of_a_document_outside_the_repository():
    _fail_on(absent_document_mentions(), "mentions of a document the reader does not have "
             "(cite the appendix, 'appendix A.N', or a published source)")


def test_appendix_citations_point_to_existing_sections():
    _fail_on(broken_appendix_citations(), "citations of appendix sections that do not exist")


def test_chapter_cross_references_name_existing_chapters():
    _fail_on(broken_chapter_citations(), "references to chapters that do not exist")


def test_no_notebook_or_test_asserts_a_speed():
    _fail_on(speed_assertions(), "assertions on a speed, a time or a CPU feature")


def test_the_checks_catch_what_they_should():
    """The patterns themselves: each catches its example and lets the allowed form through."""
    bad = [_DEV_NOTES + " section 3", "the facts " + "sheet", "see " + "\u00a7" + "6", "the seed " + "article",
           "../" + "sha" + "red/reference"]
    for line in bad:
        assert any(p.search(line) for _, p in ABSENT_DOCUMENTS), line
    good = ["appendix A.4", "Chapter 05, section 2.4", "arXiv 2502.13923", "facts = frames.numpy()"]
    for line in good:
        assert not any(p.search(line) for _, p in ABSENT_DOCUMENTS), line
    assert APPENDIX_CITATION.findall("see appendix A.9 and \u00a7A.2") == ["9", "2"]
    assert CHAPTER_CITATION.findall("Chapter 05, section 2.4; chapters 07 and 10") == ["05", "07"]
    ASSERT = "ass" + "ert"  # the examples are assembled, so this file does not read as asserting a speed itself
    speed_asserts = [
        f'    {ASSERT} bf16 > 2 * fp32 or device == "cuda"',
        f"{ASSERT} time.perf_counter() - start < 5",
        f"{ASSERT} elapsed < 5.0",
        f"    {ASSERT} 100 < gflops['float32']",
    ]
    assert all(SPEED_ASSERT.search(line) for line in speed_asserts)
    assert not SPEED_ASSERT.search("assert dtype in (torch.float32, torch.bfloat16)")
    assert not SPEED_ASSERT.search('assert set(roofs) == {"gflops_float32"} and all(v > 0 for v in roofs.values())')
    assert not SPEED_ASSERT.search("assert err_float32 < 1e-5")


if __name__ == "__main__":
    for check in (absent_document_mentions, broken_appendix_citations, broken_chapter_citations, speed_assertions):
        found = check()
        print(f"== {check.__name__}: {len(found)}")
        print("\n".join(found))
