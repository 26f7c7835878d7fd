"""The docs cannot go stale: generated pages equal what the generator writes now, every setting and flag has a help
text, every relative link and anchor in README.md and docs/ resolves, every page is in the site's nav.

Fast (under a few seconds): no TensorFlow, no mkdocs build (`make docs` builds the site with --strict in CI).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import sys
import urllib.parse
from typing import Dict, List, Set

import markdown
import pytest
import yaml
from conftest import REPO

from pipeline import outcome

DOCS = os.path.join(REPO, "docs")
README_MAX_LINES = 150


def _generator():
    spec = importlib.util.spec_from_file_location("gen_docs", os.path.join(REPO, "tools", "gen_docs.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gen = _generator()


def markdown_files() -> List[str]:
    """README.md, the pointer files left where pages moved from, and every page under docs/."""
    pages = sorted(glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True))
    others = ["README.md", "ARCHITECTURE.md", "benchmarks/README.md", "kubernetes/README.md"]
    return [os.path.join(REPO, name) for name in others] + pages


def _render(path: str) -> markdown.Markdown:
    md = markdown.Markdown(extensions=["tables", "fenced_code", "toc"])
    with open(path, encoding="utf-8") as f:
        md.html = md.convert(f.read())
    return md


def _anchors(tokens) -> Set[str]:
    found = set()
    for token in tokens:
        found.add(token["id"])
        found |= _anchors(token["children"])
    return found


_ANCHORS: Dict[str, Set[str]] = {}


def anchors(path: str) -> Set[str]:
    """The heading ids Python-Markdown's toc gives the page (what MkDocs uses)."""
    if path not in _ANCHORS:
        _ANCHORS[path] = _anchors(_render(path).toc_tokens)
    return _ANCHORS[path]


def links(path: str) -> List[str]:
    """Every link target of a page, outside code (from the rendered HTML), pictures included."""
    html = _render(path).html
    return re.findall(r'<a [^>]*href="([^"]*)"', html) + re.findall(r'<img [^>]*src="([^"]*)"', html)


# --- generated pages ----------------------------------------------------------------------------------------------


def test_every_setting_has_a_help_text():
    missing = [key for _, key, _, _, text in gen.setting_rows() if not text.strip()]
    assert missing == [], (
        f"settings without help: {missing}. Write a comment right above the field in its dataclass "
        "(trainer/settings.py, components/settings.py, serving/settings.py, pipeline/configs.py)"
    )


def test_every_cli_argument_has_a_help_text():
    assert gen.arguments_without_help() == [], "give these arguments help= in pipeline/cli.py"


def test_the_known_positionals_without_help_still_lack_it():
    """POSITIONALS_WITHOUT_HELP in tools/gen_docs.py is an exception list, not a hiding place: an argument that got
    help in pipeline/cli.py leaves it."""
    commands = gen.subcommands(gen.build_parser())
    for command, dest in gen.POSITIONALS_WITHOUT_HELP:
        action = next(a for a in commands[command]._actions if a.dest == dest)
        assert not action.help, f"{command} {dest} has a help text now: remove it from POSITIONALS_WITHOUT_HELP"


def test_generated_pages_are_current():
    assert gen.stale_pages() == [], "a generated page differs from its source: run `make docs` and commit the pages"


def test_the_settings_page_lists_every_setting():
    from pipeline.configs import PipelineConfig

    def keys(obj, prefix=""):
        import dataclasses

        for field in dataclasses.fields(obj):
            value = getattr(obj, field.name)
            if dataclasses.is_dataclass(value):
                yield from keys(value, f"{field.name}.")
            else:
                yield prefix + field.name

    with open(os.path.join(REPO, gen.SETTINGS_PAGE), encoding="utf-8") as f:
        page = f.read()
    assert [key for key in keys(PipelineConfig()) if f"| `{key}` |" not in page] == []


def test_the_troubleshooting_page_has_every_battery_row():
    with open(os.path.join(REPO, gen.TROUBLESHOOTING_PAGE), encoding="utf-8") as f:
        page = f.read()
    rows = gen.battery_module().ROWS
    assert len(rows) >= 25
    for row in rows:
        says = ", ".join(f"`{words}`" for words in row.says)
        assert f"| {gen._cell(row.bad_input)} | {row.code} | {gen._cell(says)} |" in page, row.id


# --- hand-written pages -------------------------------------------------------------------------------------------


def test_the_exit_code_page_matches_outcome():
    """docs/exit-codes.md documents exactly the codes of pipeline/outcome.py (the table moved there from README)."""
    with open(os.path.join(DOCS, "exit-codes.md"), encoding="utf-8") as f:
        page = f.read()
    documented = {int(m.group(1)): m.group(2) for m in re.finditer(r"^\| (\d) \| (.+) \|$", page, re.MULTILINE)}
    codes = {code for name, code in vars(outcome).items() if name.startswith("EXIT_") and isinstance(code, int)}
    assert set(documented) == codes
    assert "KFP" in documented[outcome.EXIT_UNAVAILABLE] and "try again later" in documented[outcome.EXIT_UNAVAILABLE]


def test_readme_fits_on_two_screens():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into a docs page"
    # The two commands stay at the top, as they were.
    assert lines[2].startswith("```") and lines[3].startswith("make demo   # set up, then run the whole pipeline")
    assert lines[4] == "make test   # set up, then run the test suite"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: os.path.relpath(p, REPO))
def test_relative_links_resolve(path: str):
    broken = []
    for target in links(path):
        parsed = urllib.parse.urlparse(target)
        if parsed.scheme or target.startswith("//"):
            continue  # http(s), mailto: not checked offline
        file_part = urllib.parse.unquote(parsed.path)
        linked = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        if not os.path.exists(linked):
            broken.append(f"{target}: no such file")
        elif parsed.fragment and linked.endswith(".md") and parsed.fragment not in anchors(linked):
            broken.append(f"{target}: no heading with id #{parsed.fragment} in {os.path.relpath(linked, REPO)}")
    assert broken == [], f"{os.path.relpath(path, REPO)}: " + "; ".join(broken)


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    with open(os.path.join(REPO, "mkdocs.yml"), encoding="utf-8") as f:
        config = yaml.safe_load(f)

    def entries(nav) -> List[str]:
        out = []
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            out += entries(value) if isinstance(value, list) else [value]
        return out

    nav = set(entries(config["nav"]))
    pages = {os.path.relpath(p, DOCS) for p in glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True)}
    assert nav == pages, f"in nav only: {sorted(nav - pages)}; pages not in nav: {sorted(pages - nav)}"
