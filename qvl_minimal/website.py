"""`python -m qvl_minimal site`: the book as a static website, built offline from the stored notebooks.

    README.md                -> index.html (the front page; links to chapters become page links)
    chapters/*.ipynb         -> chapters/*.html, as stored: the outputs `pytest --nbval` verified,
                                never re-executed (myst-nb with execution off)
    figures/*.png            -> figures/ (the README's pictures)
    MathJax 2 (from the installed package jupyter-server-mathjax) -> _static/mathjax/, so math
                                renders from disk, without a network

Sphinx (with myst-nb and sphinx-book-theme) does the work; this module lays out a temporary
source folder, writes its conf.py, and runs one build. Nothing is fetched at build time. The
result opens directly from disk: `<out>/index.html`. The folder `--out` is replaced whole, so it must
be new, empty, or a site built before (it holds SITE_MARKER); anything else is refused. The tools are
an optional extra, `pip install -e ".[site]"`, which `.[dev]` includes (the tests build the site).
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository: README.md, chapters/, figures/
SITE_MARKER = ".qvl-site"  # written into every site built, so that a rebuild may replace that folder, and no other
MISSING_TOOLS = ("the website needs Sphinx, myst-nb, sphinx-book-theme and jupyter-server-mathjax; "
                 'install them with `pip install -e ".[site]"`')

CONF_PY = '''\
project = "Qwen2.5-VL from Scratch"
author = "the authors of Qwen2.5-VL from Scratch"
extensions = ["myst_nb"]
nb_execution_mode = "off"                      # show the outputs nbval verified; never re-run
myst_enable_extensions = ["dollarmath", "amsmath"]
html_theme = "sphinx_book_theme"
html_title = project
html_static_path = ["_static"]
html_sourcelink_suffix = ""                    # _sources/chapters/NN.ipynb keeps its name
html_theme_options = {{
    "use_download_button": True,               # each page links to its notebook
    "show_toc_level": 2,
    "home_page_in_toc": True,
}}
html_last_updated_fmt = None
mathjax_path = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"   # a local copy: works offline
mathjax3_config = None
mathjax2_config = {{                            # MathJax 2 (the local copy's version): typeset the
    "tex2jax": {{                               # math nodes, also inside myst-nb's ignored sections
        "inlineMath": [["\\(", "\\)"]],
        "displayMath": [["\\[", "\\]"]],
        "processClass": "math|output_area|tex2jax_process|mathjax_process",
        "ignoreClass": "tex2jax_ignore|mathjax_ignore",
    }},
    "HTML-CSS": {{"webFont": "STIX-Web", "availableFonts": [], "imageFont": None}},  # the fonts it ships
}}
exclude_patterns = ["_build"]
suppress_warnings = ["mystnb.unknown_mime_type"]
'''

TOCTREE = """

```{{toctree}}
:hidden:
:caption: The book
:maxdepth: 1

{pages}
```
"""


def chapter_notebooks(chapters: Path = ROOT / "chapters") -> list[Path]:
    """The notebooks of the book in reading order: 00_ ... 13_, then the appendix; hidden files (an
    editor's .~lock or ._ copies) left out. The one list the website and the handouts both use."""
    notebooks = (p for p in Path(chapters).glob("*.ipynb") if not p.name.startswith("."))
    return sorted(notebooks, key=lambda p: (not p.name[:2].isdigit(), p.name))


def check_out_folder(out: Path) -> None:
    """`--out` may be new, empty, or a site this command built (it holds SITE_MARKER): it is replaced
    whole. Anything else (`--out .` would be the repository) is refused before building."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder; choose a new folder, e.g. --out _site")
    if out.is_dir() and any(out.iterdir()) and not (out / SITE_MARKER).is_file():
        raise FileExistsError(f"--out {out} is a folder that holds other files and is not a site built by this "
                              f"command (no {SITE_MARKER} in it); it would be deleted and replaced. Choose a new or "
                              "empty folder, e.g. --out _site")


def front_page(readme: str, notebooks: list[Path]) -> str:
    """README.md as index.md: a navigation tree of the chapters appended, links to notebooks kept.

    MyST turns a link to a source file (`chapters/00_tour.ipynb`) into a link to its page; links
    to files outside the site (LICENSE, pyproject.toml, ...) become their path in the repository.
    """
    def repo_link(match: re.Match) -> str:
        text, target = match.group(1), match.group(2)
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            return match.group(0)
        path = target.split("#")[0]
        if path.startswith("chapters/") and path.endswith(".ipynb") or path.startswith("figures/"):
            return match.group(0)
        return f"{text[1:-1]} (`{target}` in the repository)"

    body = re.sub(r"(\[[^\]]*\])\(([^)\s]+)\)", repo_link, readme)
    pages = "\n".join(f"chapters/{p.stem}" for p in notebooks)
    return body + TOCTREE.format(pages=pages)


def lay_out_sources(src: Path, root: Path = ROOT) -> None:
    """Copy what the site shows into the Sphinx source folder `src` and write its conf.py."""
    try:
        import jupyter_server_mathjax
    except ImportError as e:
        raise SystemExit(f"error: {MISSING_TOOLS}") from e
    notebooks = chapter_notebooks(root / "chapters")
    if not notebooks:
        raise FileNotFoundError(f"no notebooks in {root / 'chapters'}: run this from a checkout of the book")
    (src / "chapters").mkdir(parents=True)
    for notebook in notebooks:
        shutil.copy2(notebook, src / "chapters" / notebook.name)
    shutil.copytree(root / "figures", src / "figures", ignore=shutil.ignore_patterns("*.md"))
    mathjax = Path(jupyter_server_mathjax.__file__).parent / "static"
    shutil.copytree(mathjax, src / "_static" / "mathjax")
    (src / "index.md").write_text(front_page((root / "README.md").read_text(encoding="utf-8"), notebooks),
                                  encoding="utf-8")
    (src / "conf.py").write_text(CONF_PY.format(), encoding="utf-8")


def build_site(out: Path, root: Path = ROOT, quiet: bool = True) -> Path:
    """Build the website into `out` (a previous site there is replaced; any other non-empty folder is
    refused: check_out_folder); returns the path of index.html."""
    out = Path(out).resolve()
    check_out_folder(out)
    try:
        from sphinx.cmd.build import build_main
    except ImportError as e:
        raise SystemExit(f"error: {MISSING_TOOLS}") from e
    with tempfile.TemporaryDirectory(prefix="qvl-site-") as tmp:
        src = Path(tmp) / "src"
        lay_out_sources(src, root)
        html = Path(tmp) / "build" / "html"  # myst-nb writes its scratch files beside it, in tmp
        args = ["-b", "html", "-j", "1", "-E", "-d", str(Path(tmp) / "doctrees"), str(src), str(html)]
        status = build_main(args + (["-q"] if quiet else []))
        if status != 0:
            raise RuntimeError(f"sphinx-build failed with exit status {status} (run with --verbose to see why)")
        (html / SITE_MARKER).write_text("built by `python -m qvl_minimal site`; a rebuild replaces this folder\n")
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(html, out)
    return out / "index.html"


def configure(parser) -> None:
    parser.add_argument("--out", default=str(ROOT / "_site"),
                        help="folder for the website (default: _site/ in the repository; git ignores it)")
    parser.add_argument("--verbose", action="store_true", help="show Sphinx's own messages")


def run(args) -> int:
    try:
        check_out_folder(Path(args.out).resolve())
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("building the website from the stored notebooks (no execution, no network) ...", file=sys.stderr)
    index = build_site(Path(args.out), quiet=not args.verbose)
    print(f"wrote {index.parent}; open {index} in a browser")
    return 0
