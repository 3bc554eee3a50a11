"""Every relative link in the project's Markdown resolves: README.md, docs/**/*.md and each role's
README. A link names a file or directory that exists, and its ``#anchor`` (in the same file or
another Markdown file) is one of that file's headings, slugged as GitHub slugs them. Links with a
scheme (https:, mailto:) are not followed."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]

FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def documents() -> list[Path]:
    return sorted({ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "roles").glob("*/README.md")})


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines, fence = [], ""
    for number, line in enumerate(text.splitlines(), 1):
        opened = FENCE.match(line)
        if fence:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = ""
            continue
        if opened:
            fence = opened.group(1)
            continue
        lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: the rendered text lower-cased, every character but
    letters, digits, '-', '_' and spaces dropped, spaces made '-'."""
    text = INLINE_CODE.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link shows its text
    text = re.sub(r"<[^>]+>", "", text).replace("*", "")
    kept = "".join(c for c in text.lower()
                   if c in "-_ " or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a Markdown file (a repeated one gets -1, -2...), and HTML anchors."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _number, line in prose_lines(path.read_text(encoding="utf-8")):
        found.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if match is None:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of each link and image outside code (a link's text may span lines)."""
    source = path.read_text(encoding="utf-8")
    prose = [""] * (source.count("\n") + 1)
    for number, line in prose_lines(source):
        prose[number - 1] = INLINE_CODE.sub("", line)
    text = "\n".join(prose)
    found = sorted((m for pattern in (LINK, REFERENCE) for m in pattern.finditer(text)), key=lambda m: m.start())
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1).strip("<>")) for m in found]


def broken(path: Path) -> list[str]:
    """Why each relative link of ``path`` does not resolve ("file:line: target: why")."""
    problems = []
    for number, target in links(path):
        if SCHEME.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{number}: {target}"
        resolved = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not resolved.exists():
            problems.append(f"{where}: no such file")
            continue
        if not anchor:
            continue
        if resolved.suffix != ".md" or resolved.is_dir():
            problems.append(f"{where}: an anchor into something that is not a Markdown file")
        elif unquote(anchor) not in anchors(resolved):
            problems.append(f"{where}: no heading with that anchor in {resolved.name}")
    return problems


def test_every_relative_link_and_anchor_resolves() -> None:
    problems = [problem for path in documents() for problem in broken(path)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_check_sees_the_links_it_checks() -> None:
    """Not vacuous: the README links into docs/ and the roles, and each role's README is read."""
    relative = [t for t in links(ROOT / "README.md") if not SCHEME.match(t[1])]
    assert len(relative) >= 10
    assert len([p for p in documents() if p.parent.parent.name == "roles"]) >= 7


@pytest.mark.parametrize(("heading", "anchor"), [
    ("What a session can reach", "what-a-session-can-reach"),
    ("The local-first workspace (mounter `local`)", "the-local-first-workspace-mounter-local"),
    ("The volume service: restarts, upgrades and a dying s3fs",
     "the-volume-service-restarts-upgrades-and-a-dying-s3fs"),
    ("A fleet (Docker Swarm)", "a-fleet-docker-swarm"),
    ("`/SandboxHost.Released`", "sandboxhostreleased"),
    ("`sandbox_host` role", "sandbox_host-role"),
    ("Limits — and 20 ms", "limits--and-20-ms"),
    ("[Docs](docs/x.md) here", "docs-here"),
])
def test_anchors_are_githubs(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Title\n\n## Part\n\n## Part\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[ok](other.md) [ok](other.md#part) [ok](other.md#part-1) [ok](#page) [web](https://example.com/x#y)\n"
        "`[code](missing.md)` and\n```\n[fenced](missing.md)\n```\n"
        "[gone](missing.md) [bad anchor](other.md#nowhere) [bad here](#nowhere) ![img](nope.png) [a link\n"
        "over two lines](#nor-here)\n"
        "[ref]: missing-too.md\n"
    )
    assert [p.split(": ", 1)[1] for p in broken(page)] == [
        "missing.md: no such file",
        "other.md#nowhere: no heading with that anchor in other.md",
        "#nowhere: no heading with that anchor in page.md",
        "nope.png: no such file",
        "#nor-here: no heading with that anchor in page.md",
        "missing-too.md: no such file",
    ]
