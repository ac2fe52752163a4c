"""The README's promises: CI runs its test command verbatim, and every file it cites exists."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _bash_blocks(text: str) -> list[str]:
  return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_ci_runs_exactly_the_readme_test_command():
  commands = [line for block in _bash_blocks(README) for line in block.splitlines()
              if "pytest" in line]
  assert len(commands) == 1, commands
  ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith("#")]
  assert ci[-1] == commands[0], (ci[-1], commands[0])


def test_every_cited_repository_path_exists():
  # Paths in backquotes or Markdown links that start with a top-level folder of the repo.
  cited = set(re.findall(r"(?:`|\]\()((?:benchmarks|examples|jflash|tests|\.ci)/[^`)\s]*)",
                         README))
  cited |= set(re.findall(r"\b([A-Z_]+\.md)\b", README))
  assert cited, "the README cites no files?"
  missing = sorted(p for p in cited if not (ROOT / p).exists())
  assert not missing, missing
