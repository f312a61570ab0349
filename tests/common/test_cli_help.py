"""``--help`` says, for every argument and option, what it takes and, where it takes a value,
its default; ``runtime --help`` describes the runtime's own flags, not the control service's."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from modelrunner.app.cli import build_parser


def _options(
    parser: argparse.ArgumentParser, command: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, (*command, name))
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield command, action


OPTIONS = [
    pytest.param(action, id=f"{' '.join(command)} {'/'.join(action.option_strings) or action.dest}")
    for command, action in _options(build_parser())
    if action.help != argparse.SUPPRESS
]


@pytest.mark.parametrize("action", OPTIONS)
def test_each_argument_says_what_it_takes_and_its_default(action: argparse.Action) -> None:
    assert action.help, "no help"
    if action.nargs == 0 or not action.option_strings or action.required:
        return  # a flag (off unless given), or a positional argument (no default)
    assert action.metavar or action.choices, "no metavar naming what it takes"
    assert "default" in action.help, "no default said"


def test_runtime_help_names_what_its_flags_are_for() -> None:
    (runtime,) = [
        sub
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
        for name, sub in action.choices.items()
        if name == "runtime"
    ]
    helps = {o: a.help or "" for a in runtime._actions for o in a.option_strings}
    assert "--port" not in helps  # a runtime alone has no control service port
    assert helps["--host"].startswith("interface the runtime listens on")
    assert "control service" not in helps["--host"] + helps["--flight-port"]
    assert helps["--control"].startswith("the control service to register with")
