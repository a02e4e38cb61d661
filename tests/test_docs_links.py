"""Every link in README.md and docs/**/*.md leads somewhere.

A relative link must name a file or directory of the repository, and a ``#fragment`` must be a
heading of the Markdown file it points into (the same file for a bare ``#fragment``), with GitHub's
rules for turning a heading into an anchor. External links are not fetched (the tests have no
network) but must be well-formed ``http(s)://`` or ``mailto:`` addresses. Code blocks and code
spans are not Markdown, so nothing in them is checked.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def markdown_files(root: Path = ROOT) -> list[Path]:
    """README.md and every Markdown file under docs/: what the link check walks."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


# -- reading Markdown ---------------------------------------------------------------------------

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_FENCE_END = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*$")
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_HTML_ID = re.compile(r"""<[a-zA-Z][^>]*?\s(?:id|name)\s*=\s*["']([^"']+)["']""")


def prose_lines(text: str) -> list[str]:
    """The file's lines with fenced code blocks blanked out (line numbers stay as they are)."""
    lines = text.split("\n")
    out: list[str] = []
    fence: str | None = None
    for line in lines:
        match = _FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
                out.append("")
            else:
                out.append(line)
        else:
            out.append("")
            closing = _FENCE_END.match(line)
            if closing and closing.group(1)[0] == fence[0] and len(closing.group(1)) >= len(fence):
                fence = None
    return out


def _plain_segment(text: str) -> str:
    """Inline Markdown outside code spans, reduced to the text GitHub renders."""
    text = re.sub(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\([^)]*\)", r"\1", text)  # links, images
    text = re.sub(r"\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\[[^\]]*\]", r"\1", text)  # reference links
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = re.sub(r"(?<![A-Za-z0-9])_+|_+(?![A-Za-z0-9])", "", text)  # _emphasis_, not snake_case
    text = re.sub(r"\\(.)", r"\1", text)  # backslash escapes
    return html.unescape(text)


def heading_text(markdown: str) -> str:
    """A heading's rendered text: code spans keep their content, the rest loses its markup."""
    parts: list[str] = []
    pos = 0
    for match in _CODE_SPAN.finditer(markdown):
        parts.append(_plain_segment(markdown[pos : match.start()]))
        code = match.group(2)
        if len(code) > 1 and code.startswith(" ") and code.endswith(" "):
            code = code[1:-1]
        parts.append(code)
        pos = match.end()
    parts.append(_plain_segment(markdown[pos:]))
    return "".join(parts).strip()


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading (before numbering duplicates).

    Lower case; every character that is not a letter, a digit, a mark, ``_``, ``-`` or a space is
    dropped; each space becomes ``-``.
    """
    out = []
    for ch in heading_text(heading).lower():
        if ch == " ":
            out.append("-")
        elif ch == "-" or unicodedata.category(ch)[0] in "LNM" or unicodedata.category(ch) == "Pc":
            out.append(ch)
    return "".join(out)


def anchors(text: str) -> set[str]:
    """Every anchor a Markdown file has: heading slugs (duplicates numbered -1, -2, ...) and HTML ids."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    lines = prose_lines(text)
    headings: list[str] = []
    previous = ""
    for line in lines:
        atx = _ATX.match(line)
        if atx:
            headings.append(atx.group(2) or "")
        elif _SETEXT.match(line) and previous.strip() and not _is_block_start(previous):
            headings.append(previous.strip())
        previous = line
    for heading in headings:
        slug = github_slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    found.update(_HTML_ID.findall(_COMMENT.sub("", text)))
    return found


def _is_block_start(line: str) -> bool:
    """Lines that a following ``---`` does not turn into a heading: list items, tables, headings."""
    stripped = line.strip()
    return bool(re.match(r"([-*+]|\d+[.)])\s|#|\||>", stripped)) or _SETEXT.match(line) is not None


# -- finding links ------------------------------------------------------------------------------

_INLINE = re.compile(
    r"\[(?:[^\[\]]|\[[^\[\]]*\])*\]"  # [text], one level of nested brackets
    r"\(\s*(<[^>\n]*>|[^\s()]*(?:\([^\s()]*\)[^\s()]*)*)"  # (destination
    r"""(?:\s+(?:"[^"]*"|'[^']*'|\([^)]*\)))?\s*\)"""  # optional "title")
)
_REFERENCE_USE = re.compile(r"\[((?:[^\[\]]|\[[^\[\]]*\])+)\]\[([^\]]*)\]")
_REFERENCE_DEF = re.compile(r"^ {0,3}\[([^\]]+)\]:[ \t]*(<[^>]*>|\S+)", re.MULTILINE)
_AUTOLINK = re.compile(r"<((?:https?|mailto):[^>\s]+)>")
_HTML_LINK = re.compile(r"""<(?:a|img)\s[^>]*?(?:href|src)\s*=\s*["']([^"']*)["']""", re.IGNORECASE)


@dataclass(frozen=True)
class Link:
    line: int
    target: str


def _label(text: str) -> str:
    return " ".join(text.split()).lower()


def links(text: str) -> tuple[list[Link], list[Link]]:
    """The links of a Markdown file, and its reference links whose label is not defined."""
    lines = prose_lines(_COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), text))
    found: list[Link] = []
    undefined: list[Link] = []
    definitions: set[str] = set()
    blocks: list[tuple[int, str]] = []  # paragraphs: a link's text may wrap over lines
    start = 0
    for number, line in enumerate([*lines, ""], 1):
        if not line.strip():
            if start:
                blocks.append((start, "\n".join(lines[start - 1 : number - 1])))
            start = 0
        elif not start:
            start = number
    uses: list[tuple[int, str]] = []
    for first, block in blocks:
        # Code spans hold no links; blank them keeping the offsets (and so the line numbers).
        block = _CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), block)

        def line_of(pos: int, first: int = first, block: str = block) -> int:
            return first + block.count("\n", 0, pos)

        for match in _REFERENCE_DEF.finditer(block):
            definitions.add(_label(match.group(1)))
            found.append(Link(line_of(match.start()), match.group(2)))
        without_defs = _REFERENCE_DEF.sub(lambda m: " " * len(m.group(0)), block)
        for match in _INLINE.finditer(without_defs):
            found.append(Link(line_of(match.start()), match.group(1)))
        for match in _AUTOLINK.finditer(without_defs):
            found.append(Link(line_of(match.start()), match.group(1)))
        for match in _HTML_LINK.finditer(without_defs):
            found.append(Link(line_of(match.start()), match.group(1)))
        for match in _REFERENCE_USE.finditer(_INLINE.sub(lambda m: " " * len(m.group(0)), without_defs)):
            uses.append((line_of(match.start()), match.group(2) or match.group(1)))
    for number, label in uses:
        if _label(label) not in definitions:
            undefined.append(Link(number, f"[{label}]"))
    return found, undefined


# -- checking links -----------------------------------------------------------------------------

_HOST = re.compile(
    r"^(localhost|\d{1,3}(\.\d{1,3}){3}|\[[0-9a-fA-F:.]+\]|([A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,})$"
)
_LINE_ANCHOR = re.compile(r"L\d+(-L\d+)?")


def external_problem(target: str) -> str | None:
    """Why an absolute URL is malformed, or None."""
    if any(ch.isspace() for ch in target):
        return "contains white space"
    parts = urlsplit(target)
    scheme = parts.scheme.lower()
    if scheme == "mailto":
        return None if re.fullmatch(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}", parts.path) else "not an e-mail address"
    if scheme not in ("http", "https"):
        return f"unexpected scheme {scheme!r}"
    host = parts.netloc.rpartition("@")[2]
    if host.startswith("["):
        name, _, port = host[1:].partition("]")
        name, port = f"[{name}]", port.removeprefix(":")
    else:
        name, _, port = host.partition(":")
    if not _HOST.match(name):
        return f"invalid host {name!r}"
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        return f"invalid port {port!r}"
    return None


def check_file(path: Path, root: Path = ROOT, anchor_cache: dict[Path, set[str]] | None = None) -> list[str]:
    """Every problem with the links of one Markdown file, as 'file:line: target: why'."""
    cache = anchor_cache if anchor_cache is not None else {}

    def anchors_of(md: Path) -> set[str]:
        if md not in cache:
            cache[md] = anchors(md.read_text(encoding="utf-8"))
        return cache[md]

    problems = []
    found, undefined = links(path.read_text(encoding="utf-8"))
    where = path.relative_to(root)
    for link in undefined:
        problems.append(f"{where}:{link.line}: {link.target}: reference link without a definition")
    for link in found:
        target = link.target.strip()
        if target.startswith("<") and target.endswith(">"):
            target = target[1:-1]
        why = _problem(path, target, root, anchors_of)
        if why:
            problems.append(f"{where}:{link.line}: {target or '(empty)'}: {why}")
    return problems


def _problem(source: Path, target: str, root: Path, anchors_of: Callable[[Path], set[str]]) -> str | None:
    if not target:
        return "empty link"
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", target) or target.startswith("//"):
        return external_problem(target) if not target.startswith("//") else "protocol-relative URL"
    path_part, _, fragment = target.partition("#")
    path_part = path_part.partition("?")[0]
    if path_part:
        relative = unquote(path_part)
        base = root if relative.startswith("/") else source.parent
        dest = (base / relative.lstrip("/")).resolve()
        if not dest.is_relative_to(root.resolve()):
            return "points outside the repository"
        if not dest.exists():
            return "no such file"
    else:
        dest = source
    if not fragment:
        return None
    if dest.is_dir():
        return "an anchor into a directory"
    if dest.suffix.lower() != ".md":
        return None if _LINE_ANCHOR.fullmatch(fragment) else "an anchor into a file that is not Markdown"
    if unquote(fragment) not in anchors_of(dest):
        return f"no heading with the anchor #{fragment} in {dest.relative_to(root.resolve())}"
    return None


# -- the tests ----------------------------------------------------------------------------------

_CACHE: dict[Path, set[str]] = {}


def test_the_walk_covers_readme_and_nested_docs() -> None:
    files = markdown_files()
    assert files[0] == ROOT / "README.md"
    assert DOCS / "deployment.md" in files
    assert DOCS / "deploy" / "nginx.md" in files  # subdirectories are walked too


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(path: Path) -> None:
    problems = check_file(path, anchor_cache=_CACHE)
    assert problems == [], "broken links:\n" + "\n".join(problems)


def test_the_docs_index_maps_every_page() -> None:
    """docs/README.md links to every page under docs/, so that no page is unreachable from it."""
    index = DOCS / "README.md"
    found, _ = links(index.read_text(encoding="utf-8"))
    linked = {(index.parent / unquote(link.target.partition("#")[0])).resolve() for link in found}
    missing = [
        str(page.relative_to(ROOT)) for page in markdown_files()[1:] if page != index and page.resolve() not in linked
    ]
    assert missing == [], f"pages missing from docs/README.md: {missing}"


def _quick_start_commands(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.DOTALL)


def test_the_docs_index_quick_start_is_the_readmes() -> None:
    commands = _quick_start_commands(ROOT / "README.md")
    assert len(commands) == 2
    assert _quick_start_commands(DOCS / "README.md") == commands


# -- the checker itself: each kind of breakage is found -------------------------------------------


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        # Anchors as GitHub renders them, several used by links in these docs.
        ("App strings and `--factory`", "app-strings-and---factory"),
        ("HTTP/1.0, keep-alive and pipelining", "http10-keep-alive-and-pipelining"),
        ("Sending files: `http.response.pathsend`", "sending-files-httpresponsepathsend"),
        ("On 16–64 cores", "on-1664-cores"),
        ("Free-threaded CPython 3.13t", "free-threaded-cpython-313t"),
        ("TLS: HTTPS and WSS", "tls-https-and-wss"),
        ("`X-Forwarded-Host` (`--forwarded-host`, off by default)", "x-forwarded-host---forwarded-host-off-by-default"),
        ("Why `SO_REUSEPORT`?", "why-so_reuseport"),
        ("*Emphasis* and _more_ and [a link](x.md)", "emphasis-and-more-and-a-link"),
        ("What's new &amp; <em>why</em>", "whats-new--why"),
        ("Café ünïcode", "café-ünïcode"),
    ],
)
def test_github_slug(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug


def test_duplicate_and_setext_headings_and_html_ids_are_anchors() -> None:
    text = '# Usage\n\n## Usage\n\nSetext title\n------------\n\n- a list item\n---\n\n<a id="custom"></a>\n'
    assert anchors(text) == {"usage", "usage-1", "setext-title", "custom"}


def test_the_checker_reports_each_kind_of_broken_link(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## A section\n", encoding="utf-8")
    (tmp_path / "code.py").write_text("print()\n", encoding="utf-8")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "\n".join(
            [
                "# Page",
                "",
                "[fine](other.md) [fine](other.md#a-section) [fine](#page) [fine](../code.py#L1)",
                "[fine](<other.md>) [fine](https://example.com/a?b#c) <https://example.org> [fine][ref]",
                "",
                "[ref]: other.md#other-page",
                "",
                "[missing file](nothing.md)",
                "[missing anchor](other.md#no-such-section)",
                "[missing local anchor](#nowhere)",
                "[wrapped",
                "text](gone.md)",
                "[outside](../../etc/passwd)",
                "[bad host](https://example..com) [bad port](https://localhost:99999/) [ftp](ftp://example.com/)",
                "[undefined reference][nope]",
                "",
                "`[in a code span](gone.md)`",
                "",
                "```md",
                "[in a code block](gone.md)",
                "```",
                "<!-- [in a comment](gone.md) -->",
            ]
        ),
        encoding="utf-8",
    )
    problems = check_file(page, root=tmp_path)
    reported = sorted(p.split(": ", 1)[0].rsplit(":", 1)[1] + " " + p.split(": ")[1] for p in problems)
    assert reported == sorted(
        [
            "8 nothing.md",
            "9 other.md#no-such-section",
            "10 #nowhere",
            "11 gone.md",
            "13 ../../etc/passwd",
            "14 https://example..com",
            "14 https://localhost:99999/",
            "14 ftp://example.com/",
            "15 [nope]",
        ]
    ), problems
