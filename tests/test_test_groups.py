"""`make test` runs every test file: each is in exactly one of the Makefile's TEST_GROUPS.

Two checks once sat outside every group (tests/test_imports.py and tests/test_compat.py, when
the first group named root files one by one) and tests/export was never added: CI passed
without running them.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def groups() -> list[list[Path]]:
    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    line = re.search(r"^TEST_GROUPS\s*:=\s*(.+)$", text, re.MULTILINE)
    assert line is not None, "Makefile has no TEST_GROUPS"
    out = []
    for group in shlex.split(line.group(1)):  # a quoted group holds several paths
        paths: list[Path] = []
        for item in group.split():
            matched = sorted(REPO.glob(item)) if any(c in item for c in "*?[") else [REPO / item]
            assert matched and all(p.exists() for p in matched), f"{item} names nothing"
            paths.extend(matched)
        out.append(paths)
    return out


def covered_by(path: Path, group: list[Path]) -> bool:
    return any(path == p or p in path.parents for p in group)


def test_every_test_file_runs_in_exactly_one_group() -> None:
    files = sorted((REPO / "tests").rglob("test_*.py"))
    assert len(files) > 50  # the walk found the suite
    counts = {f: sum(covered_by(f, g) for g in groups()) for f in files}
    missing = [str(f.relative_to(REPO)) for f, n in counts.items() if n == 0]
    twice = [str(f.relative_to(REPO)) for f, n in counts.items() if n > 1]
    assert missing == [], f"not in any TEST_GROUPS entry of the Makefile: {missing}"
    assert twice == [], f"in more than one group (run twice): {twice}"


def test_the_check_sees_a_file_left_out() -> None:
    """The control: a file under a directory no group names is reported."""
    stray = REPO / "tests" / "nowhere" / "test_x.py"
    assert not any(covered_by(stray, g) for g in groups())
