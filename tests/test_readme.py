"""The README's two set-up commands are the ones CI and users run."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)[:2]


def test_first_two_commands_build_and_test():
    build, test = readme_commands()
    assert "dit-export build --precision w4a8" in build
    assert "pytest" in test
    assert test in (ROOT / ".ci" / "run").read_text()


def test_readme_build_command_runs(tmp_path):
    build = readme_commands()[0]
    invocation = shlex.split(build[build.index("dit-export build"):])
    result = subprocess.run([sys.executable, "-m", "exporter", *invocation[1:], "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "build_report.json").is_file()
