"""Refresh the copied method sections of benchmarks/RESULTS.md from benchmarks/results/*.md.

    python benchmarks/sync_results.py

Each subsection under "## Method results" whose heading ends in `` — `benchmarks/results/X.md` ``
is replaced by the current text of X.md with its headings demoted by two levels.
"""
from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
HEAD = re.compile(r"^### .* — `benchmarks/results/(?P<name>[\w.-]+\.md)`\s*$")


def demote(text: str) -> str:
    return "\n".join("##" + line if line.startswith("#") else line for line in text.strip().splitlines())


def sync(results_md: Path = HERE / "RESULTS.md") -> list[str]:
    lines = results_md.read_text().splitlines()
    out, done, i = [], [], 0
    while i < len(lines):
        m = HEAD.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        name = m["name"]
        text = (HERE / "results" / name).read_text()
        out += [lines[i], "", f"<!-- begin copy of results/{name} -->"]
        out += demote(text).splitlines()
        out += [f"<!-- end copy of results/{name} -->", ""]
        done.append(name)
        i += 1
        end = f"<!-- end copy of results/{name} -->"
        if end in lines[i:]:                       # marked copy: drop through the end marker
            i = lines.index(end, i) + 1
        else:                                      # first sync: the old copy starts with its demoted title
            seen_title = not text.lstrip().startswith("# ")
            while i < len(lines) and not lines[i].startswith("## "):
                if lines[i].startswith("### "):
                    if seen_title:
                        break
                    seen_title = True
                i += 1
        while i < len(lines) and not lines[i].strip():
            i += 1
    results_md.write_text("\n".join(out) + "\n")
    return done


if __name__ == "__main__":
    print("synced:", ", ".join(sync()))
