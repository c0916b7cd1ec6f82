"""README.es.md is a full translation of README.md, kept structurally in sync.

Same sections in the same order (heading levels), the same code blocks with the same commands
(comments may be translated), the same tables in the same shape, the same link targets. README.md
is edited by several people: when this fails, the message says exactly which section, code block,
table or link differs, so the Spanish README can be updated in the same commit.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EN, ES = REPO / "README.md", REPO / "README.es.md"


@dataclass
class Structure:
    headings: list[tuple[int, str]] = field(default_factory=list)
    code: list[tuple[str, list[str], str]] = field(default_factory=list)  # (lang, lines, section)
    tables: list[tuple[int, int, str]] = field(default_factory=list)  # (rows, cols, section)
    links: list[str] = field(default_factory=list)


def strip_comment(line: str) -> str:
    """A code line without its trailing `# comment` (translated in the Spanish README)."""
    out, quote = [], ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            break
        out.append(ch)
    return "".join(out).rstrip()


def parse(path: Path) -> Structure:
    s = Structure()
    section = "(top)"
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^(\s*)```(\w*)", line)
        if fence:
            lang, body = fence[2], []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                body.append(lines[i])
                i += 1
            if lang:  # shell/JSON/...: the same commands, comments may be translated
                lines_ = [c for c in (strip_comment(b) for b in body) if c.strip()]
            else:  # plain text (diagram, layout): the same first word per line
                lines_ = [b.split()[0] for b in body if b.strip()]
            s.code.append((lang, lines_, section))
            i += 1
            continue
        heading = re.match(r"^(#{1,6})\s+(.*)$", line)
        if heading:
            section = heading[2].strip()
            s.headings.append((len(heading[1]), section))
        elif line.startswith("|") and (i == 0 or not lines[i - 1].startswith("|")):
            rows = 0
            cols = line.count("|") - 1
            while i < len(lines) and lines[i].startswith("|"):
                if not re.match(r"^\|[\s:|-]+\|$", lines[i]):
                    rows += 1
                i += 1
            s.tables.append((rows, cols, section))
            continue
        s.links += [t for t in re.findall(r"\]\(([^)\s]+)\)", line)
                    if not t.startswith("README")]
        i += 1
    return s


def heading_differences(en: list[tuple[int, str]], es: list[tuple[int, str]]) -> list[str]:
    """Where the section trees differ (levels in order; the texts are translations)."""
    def show(h: tuple[int, str]) -> str:
        return f"'{'#' * h[0]} {h[1]}'"

    out = []
    matcher = difflib.SequenceMatcher(a=[h[0] for h in en], b=[h[0] for h in es], autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            continue
        after = f"after {show(en[i1 - 1])} / {show(es[j1 - 1])}" if i1 and j1 else "at the top"
        added = ", ".join(show(h) for h in en[i1:i2]) or "nothing"
        spanish = ", ".join(show(h) for h in es[j1:j2]) or "nothing"
        out.append(f"sections {after}: README.md has {added}, README.es.md has {spanish}")
    return out


def test_spanish_readme_has_the_same_structure():
    en, es = parse(EN), parse(ES)
    problems: list[str] = []
    problems += heading_differences(en.headings, es.headings)
    if len(en.code) != len(es.code):
        problems.append(f"README.md has {len(en.code)} code blocks, README.es.md {len(es.code)}: "
                        f"English blocks under {[c[2] for c in en.code]}, Spanish under "
                        f"{[c[2] for c in es.code]}")
    for n, (a, b) in enumerate(zip(en.code, es.code, strict=False), start=1):
        if a[:2] != b[:2]:
            diff = "\n    ".join(difflib.unified_diff(a[1], b[1], "README.md", "README.es.md",
                                                      lineterm=""))
            lang = f" (language {a[0]!r} vs {b[0]!r})" if a[0] != b[0] else ""
            problems.append(f"code block {n} (README.md section {a[2]!r}, README.es.md section "
                            f"{b[2]!r}) differs{lang}:\n    {diff}")
    if len(en.tables) != len(es.tables):
        problems.append(f"README.md has {len(en.tables)} tables, README.es.md {len(es.tables)}")
    for n, (a, b) in enumerate(zip(en.tables, es.tables, strict=False), start=1):
        if a[:2] != b[:2]:
            problems.append(f"table {n}: README.md (section {a[2]!r}) has {a[0]} rows x {a[1]} "
                            f"columns, README.es.md (section {b[2]!r}) {b[0]} rows x {b[1]}")
    if en.links != es.links:
        diff = "\n    ".join(difflib.unified_diff(en.links, es.links, "README.md links",
                                                  "README.es.md links", lineterm=""))
        problems.append(f"link targets differ:\n    {diff}")
    assert not problems, ("README.es.md is out of sync with README.md:\n  - "
                          + "\n  - ".join(problems))


def test_each_readme_links_to_the_other():
    assert "(README.es.md)" in EN.read_text(encoding="utf-8")
    assert "(README.md)" in ES.read_text(encoding="utf-8")


def test_structure_parser_sees_what_differs(tmp_path):
    a = tmp_path / "a.md"
    b = tmp_path / "b.md"
    a.write_text("# T\n\n## One\n\n```bash\nmake up   # start\n```\n\n| a | b |\n|---|---|\n"
                 "| 1 | 2 |\n\n[x](docs/docker.md)\n")
    b.write_text("# T\n\n## Uno\n\n```bash\nmake up   # arrancar\n```\n\n| a | b |\n|---|---|\n"
                 "| 1 | 2 |\n\n[x](docs/docker.md)\n")
    pa, pb = parse(a), parse(b)
    assert [h[0] for h in pa.headings] == [h[0] for h in pb.headings]
    assert pa.code[0][:2] == pb.code[0][:2] == ("bash", ["make up"])
    assert pa.tables[0][:2] == pb.tables[0][:2] == (2, 2)  # header + one row
    b.write_text("# T\n\n### Uno\n\n```bash\nmake down\n```\n\n| a | b |\n|---|---|\n"
                 "| 1 | 2 |\n| 3 | 4 |\n")
    pb = parse(b)
    assert [h[0] for h in pb.headings] == [1, 3]
    assert pb.code[0][1] == ["make down"]
    assert pb.tables[0][:2] == (3, 2)
    assert pb.links == []
