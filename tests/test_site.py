"""The website (`python -m qvl_minimal site`): built once into a temporary folder, then read as a browser would.

Checks: one page per notebook (chapters and appendix) with a link to its notebook, every image a
page shows exists, every link inside the site resolves (file and #anchor), math is served from
the site itself, and no page shows a path of the machine that built it.
"""

import os
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from qvl_minimal.__main__ import main
from qvl_minimal.website import ROOT, SITE_MARKER, build_site, chapter_notebooks, check_out_folder

MACHINE_PATHS = [str(ROOT), os.path.expanduser("~") + "/", tempfile.gettempdir() + "/"]


class Page(HTMLParser):
    """The links, images, scripts and element ids of one HTML page."""

    def __init__(self, path: Path):
        super().__init__()
        self.links, self.images, self.scripts, self.ids = [], [], [], set()
        self.feed(path.read_text(encoding="utf-8"))

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag == "img" and attrs.get("src"):
            self.images.append(attrs["src"])
        if tag == "script" and attrs.get("src"):
            self.scripts.append(attrs["src"])


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    index = build_site(tmp_path_factory.mktemp("site") / "html")
    pages = {p: Page(p) for p in index.parent.rglob("*.html")}
    return index.parent, pages


def internal(url: str) -> bool:
    return not urlsplit(url).scheme and not url.startswith("//")


def test_one_page_per_notebook_linking_to_it(site):
    out, pages = site
    notebooks = chapter_notebooks()
    assert any(n.stem.startswith("00_") for n in notebooks) and any(not n.stem[:2].isdigit() for n in notebooks)
    for notebook in notebooks:
        page = out / "chapters" / f"{notebook.stem}.html"
        assert page.is_file(), f"no page for {notebook.name}"
        source = f"../_sources/chapters/{notebook.name}"
        assert source in pages[page].links, f"{page.name} does not link to its notebook"
        assert (page.parent / source).is_file()
    front = pages[out / "index.html"]
    for notebook in notebooks:  # the side navigation reaches every chapter from the front page
        assert f"chapters/{notebook.stem}.html" in front.links, f"the front page does not link {notebook.stem}"


def test_every_image_exists(site):
    out, pages = site
    shown = 0
    for path, page in pages.items():
        for src in filter(internal, page.images):
            target = path.parent / unquote(urlsplit(src).path)
            assert target.is_file(), f"{path.relative_to(out)} shows a missing image {src}"
            shown += 1
    assert shown >= 15  # the figures stored in the chapters, and the README's architecture picture


def test_every_internal_link_resolves(site):
    out, pages = site
    checked = 0
    for path, page in pages.items():
        for href in filter(internal, page.links):
            parts = urlsplit(href)
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            if target.is_dir():
                target = target / "index.html"
            assert target.is_file(), f"{path.relative_to(out)} links to a missing {href}"
            if parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else Page(target).ids
                assert parts.fragment in ids, f"{path.relative_to(out)} links to a missing anchor {href}"
            checked += 1
    assert checked > 100


def test_math_renders_offline(site):
    out, pages = site
    scripts = {s for page in pages.values() for s in page.scripts}
    mathjax = [s for s in scripts if "MathJax" in s]
    assert mathjax, "no page loads MathJax"
    assert all(internal(s) for s in mathjax), f"MathJax must be served from the site, not {mathjax}"
    assert (out / "_static" / "mathjax" / "MathJax.js").is_file()


def test_no_page_shows_a_machine_path(site):
    out, pages = site
    for path in pages:
        text = path.read_text(encoding="utf-8")
        for machine_path in MACHINE_PATHS:
            assert machine_path not in text, f"{path.relative_to(out)} shows {machine_path}"


def test_the_readme_install_brings_every_test_tool_and_ci_uses_it():
    """The README's `pip install -e ".[dev]"` must give a green `pytest`: the dev extra carries the site
    tools these tests need, and .ci/run installs with exactly the README's command (so CI sees what a
    newcomer sees)."""
    import re
    import tomllib

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    install = re.search(r"## Install.*?\n    (pip install [^\n]+)", readme, re.S).group(1).strip()
    ci = re.findall(r"pip install --quiet (-e [^\s#]+)", (ROOT / ".ci" / "run").read_text())
    assert install == 'pip install -e ".[dev]"' and ci == ['-e ".[dev]"'], (install, ci)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "qvl-minimal[site]" in extras["dev"] or set(extras["site"]) <= set(extras["dev"])


def test_out_folder_must_be_new_empty_or_a_previous_site(tmp_path, capsys):
    check_out_folder(tmp_path / "new")  # new: fine
    (tmp_path / "empty").mkdir()
    check_out_folder(tmp_path / "empty")
    (tmp_path / "old_site").mkdir()
    (tmp_path / "old_site" / SITE_MARKER).write_text("")
    (tmp_path / "old_site" / "index.html").write_text("")
    check_out_folder(tmp_path / "old_site")  # a previous site is replaced
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "thesis.tex").write_text("months of work")
    for refused in (tmp_path / "work", ROOT, tmp_path / "work" / "thesis.tex"):
        with pytest.raises(FileExistsError, match="--out"):
            check_out_folder(refused)
    assert main(["site", "--out", str(tmp_path / "work")]) == 2  # refused before building: nothing deleted
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and len(err.strip().splitlines()) == 1
    assert (tmp_path / "work" / "thesis.tex").read_text() == "months of work"


def test_the_site_carries_its_marker(site):
    out, _ = site
    assert (out / SITE_MARKER).is_file()


def test_one_list_of_notebooks_for_the_site_and_the_handouts(tmp_path):
    from qvl_minimal.labs import handouts

    assert handouts.chapter_notebooks is chapter_notebooks
    for name in ("appendix.ipynb", "10_video.ipynb", "02_x.ipynb", ".~lock.02_x.ipynb", "._02_x.ipynb", "notes.md"):
        (tmp_path / name).write_text("{}")
    assert [p.name for p in chapter_notebooks(tmp_path)] == ["02_x.ipynb", "10_video.ipynb", "appendix.ipynb"]
