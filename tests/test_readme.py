"""The README's Python examples run as printed, in a fresh folder, as a user would paste them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from crashsafe_support import ROOT, cli_env

BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_the_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 2


def test_every_readme_python_example_runs_as_printed(tmp_path: Path) -> None:
    for k, block in enumerate(BLOCKS):
        script = tmp_path / f"example-{k}.py"
        script.write_text(block)
        env = cli_env({"SYNTHLOOP_CACHE": str(tmp_path / "cache")})  # models an example prepares stay here
        out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=300, check=False)
        assert out.returncode == 0, out.stderr
        if "__main__:close_enough" in block:  # the custom verifier example: its verdicts were counted
            counts = re.search(r"2 iterations, verdicts \{'pass': (\d+), 'fail': (\d+), 'error': (\d+)\}", out.stdout)
            assert counts is not None, out.stdout
            assert int(counts.group(1)) > 0 and int(counts.group(2)) > 0, out.stdout
        if "from-python" in block:  # the loop example: it ran, stayed in budget and got close to the optimum
            gap = float(re.search(r"gap (\S+)", out.stdout).group(1))  # type: ignore[union-attr]
            spent = float(re.search(r"spent (\d+)", out.stdout).group(1))  # type: ignore[union-attr]
            assert gap < 0.05 and spent <= 20_000, out.stdout
            again = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                                   capture_output=True, text=True, timeout=120, check=False)
            assert again.returncode == 0 and again.stdout == out.stdout  # a finished run reads back the same
