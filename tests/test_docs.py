"""The documentation site: it builds in strict mode, and the code it shows runs.

* ``mkdocs build --strict`` into a temporary folder: any warning fails, so a broken link, a
  cross-reference to an API that does not exist (also from a docstring), a missing snippet file
  or a docstring mkdocstrings cannot parse fails the test suite.
* The Python blocks of every guide page run, and print exactly the output the page shows
  (tests/_helpers/doc_blocks.py describes the conventions).
"""

from __future__ import annotations

import html as html_module
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests._helpers.doc_blocks import SKIP_MARKER, parse_blocks, run_page

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GUIDE_PAGES = sorted(p for p in DOCS.glob("*.md"))


class _Loader(yaml.SafeLoader):
    """mkdocs.yml holds ``!!python/name:`` tags; the nav does not need them resolved."""


_Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def nav_pages() -> list[str]:
    config = yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=_Loader)
    pages: list[str] = []

    def walk(item: object) -> None:
        if isinstance(item, str):
            pages.append(item)
        elif isinstance(item, list):
            for entry in item:
                walk(entry)
        elif isinstance(item, dict):
            for value in item.values():
                walk(value)

    walk(config["nav"])
    return pages


# `pip install -e ".[docs]"` has no triton: the build runs as if it were not installed.
WITHOUT_TRITON = (
    "import sys; sys.modules['triton'] = None; "  # `import triton` raises ImportError
    "from mkdocs.__main__ import cli; sys.exit(cli())"
)


def build_site(site_dir: Path) -> Path:
    """``mkdocs build --strict`` into ``site_dir``, outside the repository, without triton."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    env["NO_MKDOCS_2_WARNING"] = "1"  # Material's banner about MkDocs 2 is not a build warning
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_TRITON, "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        pytest.fail(
            f"`mkdocs build --strict` failed (exit {result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}",
            pytrace=False,
        )
    return site_dir


def check_strict_build_renders_every_nav_page(site: Path) -> None:
    for page in nav_pages():
        stem = page.removesuffix(".md")
        html = site / (stem.removesuffix("index") if stem.endswith("index") else stem + "/")
        html = html / "index.html"
        assert html.is_file(), f"{page} was not rendered"
    assert (site / "search" / "search_index.json").is_file()


def check_api_reference_is_generated_from_the_docstrings(site: Path) -> None:
    import crossent

    html = (site / "reference" / "functional" / "index.html").read_text(encoding="utf-8")
    for name in crossent.functional.__all__:
        assert f'id="crossent.functional.{name}"' in html, name
    # reST math in the docstrings is rendered as math, and roles as links, not left as text.
    assert ".. math::" not in html and ":math:`" not in html and ":func:`" not in html
    assert 'class="arithmatex"' in html
    nn_html = (site / "reference" / "nn" / "index.html").read_text(encoding="utf-8")
    for name in crossent.nn.__all__:
        assert f'id="crossent.nn.{name}"' in nn_html, name


def check_cli_reference_is_the_cli_help(site: Path) -> None:
    sys.path.insert(0, str(DOCS / "_hooks"))
    try:
        import cli_reference
    finally:
        sys.path.pop(0)
    html = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    text = re.sub(r"<[^>]+>", "", html)
    commands = cli_reference.commands()
    assert len(commands) >= 2  # the root and at least one sub-command
    for path in commands:
        # The first line of each command's own --help appears in the page.
        usage = cli_reference.help_text(path).splitlines()[0].strip()
        assert usage.startswith("Usage: crossent")
        assert usage in text, usage


def check_figures_are_made_by_the_commands_on_the_pages(site: Path) -> None:
    sys.path.insert(0, str(DOCS / "_hooks"))
    try:
        import figures
    finally:
        sys.path.pop(0)
    made = {
        match["path"]: match["command"]
        for page in DOCS.rglob("*.md")
        for match in figures.FIGURE.finditer(page.read_text(encoding="utf-8"))
    }
    for path, command in made.items():
        png = site / path
        assert png.is_file(), f"{path} ({command}) was not built"
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, path
    # Every marker became an image with its command as caption; none is left as a comment.
    for html in site.rglob("index.html"):
        text = html.read_text(encoding="utf-8")
        assert "crossent-figure" not in text, html
        assert "crossent-include" not in text, html


def check_included_sections_come_from_the_committed_reports(site: Path) -> None:
    sys.path.insert(0, str(DOCS / "_hooks"))
    try:
        import includes
    finally:
        sys.path.pop(0)
    found = 0
    for page in DOCS.rglob("*.md"):
        stem = str(page.relative_to(DOCS)).removesuffix(".md")
        for match in includes.INCLUDE.finditer(page.read_text(encoding="utf-8")):
            body = includes.section(
                (DOCS / match["path"]).read_text(encoding="utf-8"), match["heading"]
            )
            html = (site / stem / "index.html").read_text(encoding="utf-8")
            text = html_module.unescape(re.sub(r"<[^>]+>", " ", html))
            # The first words of the section are in the rendered page, in order.
            words = re.findall(r"\w+", body)[:8]
            assert len(words) == 8, (page.name, match["heading"])
            pattern = r"\W+".join(map(re.escape, words))
            assert re.search(pattern, text), (page.name, match["heading"], words)
            found += 1
    assert found >= 1
    text = "# T\n\nintro\n\n## A\n\na body\n\n### A.1\n\nsub\n\n## B\n\nb body\n"
    assert includes.section(text, "") == "intro"
    assert includes.section(text, "A") == "a body\n\n### A.1\n\nsub"
    everything = includes.section(text, "*")
    assert everything.startswith("intro") and everything.endswith("b body")
    with pytest.raises(ValueError, match="No heading"):
        includes.section(text, "C")


def check_site_loads_nothing_from_outside(site: Path) -> None:
    """Math and diagrams render offline: every script, style, image and font is in the site."""
    pages = list(site.rglob("*.html"))
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for element in re.findall(r"<(?:script|link|img)\b[^>]*>", text):
            if element.startswith("<link") and not re.search(r"stylesheet|icon|preload", element):
                continue  # a link to a page, not something the browser loads
            match = re.search(r"(?:src|href)=\"([^\"]+)\"", element)
            if match is None or match[1].startswith("data:"):
                continue
            url = match[1].split("#")[0].split("?")[0]
            assert not re.match(r"(https?:)?//", url), (page, element)
            local = site / url.lstrip("/") if url.startswith("/") else page.parent / url
            assert local.resolve().is_file(), (page, element)
    choosing = (site / "choosing" / "index.html").read_text(encoding="utf-8")
    assert 'class="mermaid"' in choosing
    mermaid = choosing.index("vendor/mermaid/mermaid.tiny.js")
    assert mermaid < choosing.index("assets/javascripts/bundle.")  # defined before the theme
    numerics = (site / "numerics" / "index.html").read_text(encoding="utf-8")
    assert 'class="arithmatex"' in numerics and "vendor/mathjax/tex-chtml.js" in numerics
    fonts = site / "javascripts" / "vendor" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2"
    assert len(list(fonts.glob("*.woff"))) >= 20  # MathJax loads them next to its script
    assert "fonts.googleapis" not in (site / "index.html").read_text(encoding="utf-8")


def check_docstring_examples_render_as_code(site: Path) -> None:
    for name in ("functional", "nn", "weights", "registry", "tools", "utilities"):
        html = (site / "reference" / name / "index.html").read_text(encoding="utf-8")
        # A doctest read as Markdown becomes three nested quotes.
        assert "<blockquote>" not in html, name
        assert "&gt;&gt;&gt;" in html or 'class="gp"' in html, name
    nn_html = (site / "reference" / "nn" / "index.html").read_text(encoding="utf-8")
    assert nn_html.count('class="gp"') >= len(__import__("crossent").nn.__all__)
    # The page states its introduction once (the module's docstring).
    text = re.sub(r"<[^>]+>", " ", nn_html)
    assert len(re.findall(r"holds\s+no\s+math\s+of\s+its\s+own", text)) == 1
    # Dataclass fields do not show the docstring of their type (int's, str's).
    tools = (site / "reference" / "tools" / "index.html").read_text(encoding="utf-8")
    assert "int(&#39;0b100&#39;, base=0)" not in tools and "int('0b100'" not in tools


def test_site_builds_in_strict_mode_and_renders_everything(tmp_path: Path) -> None:
    """One build, every check on it: under ``pytest -n auto`` the site is built once."""
    site = build_site(tmp_path / "site")
    check_strict_build_renders_every_nav_page(site)
    check_site_loads_nothing_from_outside(site)
    check_docstring_examples_render_as_code(site)
    check_api_reference_is_generated_from_the_docstrings(site)
    check_cli_reference_is_the_cli_help(site)
    check_figures_are_made_by_the_commands_on_the_pages(site)
    check_included_sections_come_from_the_committed_reports(site)


def test_every_page_is_in_the_nav() -> None:
    """A page outside the nav is unreachable from the site's menu."""
    in_nav = set(nav_pages())
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if "_hooks" not in p.parts}
    assert in_nav <= on_disk, f"nav names missing pages: {sorted(in_nav - on_disk)}"
    assert on_disk - in_nav == set(), f"pages not in the nav: {sorted(on_disk - in_nav)}"


@pytest.mark.parametrize("page", GUIDE_PAGES, ids=lambda p: p.name)
def test_guide_code_blocks_run(page: Path) -> None:
    results = run_page(page)
    blocks = parse_blocks(page.read_text(encoding="utf-8"))
    python_blocks = [b for b in blocks if b.language == "python"]
    assert len(results) == sum(not b.skip for b in python_blocks)


def test_doc_blocks_helper_catches_a_wrong_output(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        '```python\nprint(1 + 1)\n```\n\n```text title="Output"\n3\n```\n', encoding="utf-8"
    )
    with pytest.raises(AssertionError, match="printed"):
        run_page(page)
    page.write_text(f"{SKIP_MARKER}\n```python\nraise RuntimeError\n```\n", encoding="utf-8")
    assert run_page(page) == []
    page.write_text("```python\nraise RuntimeError('boom')\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="boom"):
        run_page(page)
