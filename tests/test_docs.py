"""Every command is documented in README, and every command's help has an example."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from toolkit.cli import cli

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def commands() -> list[tuple[str, click.Command]]:
    found = []
    for name, command in cli.commands.items():
        if isinstance(command, click.Group):
            found += [(f"{name} {sub}", c) for sub, c in command.commands.items()]
        else:
            found.append((name, command))
    return found


@pytest.mark.parametrize(("name", "command"), commands())
def test_command_is_in_readme_and_has_an_example(name, command):
    assert f"splitcut {name}" in README
    assert "Example" in (command.help or "")


def test_a_passed_tests_files_go_as_readme_says(pytestconfig):
    """README promises the suite's temporary files peak under 1 GB: pytest must drop a passed
    test's files (the zoo tests write gigabytes of split models) and keep one run's only."""
    assert "tmp_path_retention_policy" in README
    assert pytestconfig.getini("tmp_path_retention_policy") == "failed"
    assert int(pytestconfig.getini("tmp_path_retention_count")) == 1
