"""The README against the repository: the files, commands and limits it names are the real ones.

(Its pasted calls and snippets run in tests/test_demo.py; its systemd unit in tests/test_ops.py.)
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import ROOT
from worknet.config import ConfigError, load_settings

README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n{title}\n")
    following = re.search(r"\n#{1,3} ", README[start + len(title) + 2:])
    return README[start:start + len(title) + 2 + following.start()] if following else README[start:]


def test_the_lock_files_section_names_every_lock_file():
    tracked = subprocess.run(["git", "ls-files", "requirements/*.txt", "*package-lock.json"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    assert tracked
    locks = section("### Lock files")
    missing = [path for path in tracked if f"`{path}`" not in locks]
    assert not missing, f"README's Lock files section does not name {missing}"


def test_module_commands_run_with_the_virtualenvs_python():
    """A pasted `python -m worknet...` would run the system's python, which has none of the packages."""
    blocks = re.findall(r"```sh\n(.*?)```", README, re.DOTALL)
    bare = [line for block in blocks for line in block.splitlines()
            if re.search(r"(?<![/\w])python3? -m (worknet|bench|tests)\b", line)]
    assert not bare, bare


def test_make_lint_is_described_once_with_the_tools_it_runs():
    descriptions = re.findall(r"`make lint` runs ([^.]*)\.", README)
    assert len(descriptions) == 1, descriptions
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile[makefile.index("\nlint:"):].split("\n\n")[0]
    for tool in ("ruff", "mypy", "hadolint"):
        assert tool in recipe and tool in descriptions[0], tool


@pytest.mark.parametrize("variable", ["RPC_MAX_BODY", "RPC_MAX_MULTICALL", "BCRYPT_ROUNDS", "PLATFORM_FEE_PERCENT"])
def test_the_settings_table_states_the_bounds(variable, tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    with pytest.raises(ConfigError) as refused:
        load_settings({"NODE_ENV": "development", variable: "-1"}, env_file=str(empty))
    low, high = re.search(r"between (\S+) and (\S+),", str(refused.value)).groups()
    row = next(line for line in README.splitlines() if line.startswith(f"| `{variable}` |"))
    stated = {n.replace(",", "") for n in re.findall(r"\d[\d,]*", row.split("|")[3])}
    assert {low, high} <= stated, (row, low, high)
