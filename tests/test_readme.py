"""The README's Python quickstart runs as written (from a folder holding `examples/`), with the files it names."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_runs_as_written(tmp_path):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Quickstart (Python)", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    for name in re.findall(r'"(examples/[^"]+)"', code):
        assert (ROOT / name).is_file(), f"the quickstart names {name}, which is not in the repository"
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    previous = Path.cwd()
    os.chdir(tmp_path)
    try:
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            exec(compile(code, "README quickstart", "exec"), {})
    finally:
        os.chdir(previous)
    assert (tmp_path / "wolf_overlay.png").is_file()
    assert "timber wolf" in printed.getvalue() and "[True, False]" in printed.getvalue()
