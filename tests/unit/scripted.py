"""A stand-in for the pyinfra host that the activation's functions run their remote steps on."""

from __future__ import annotations

import types


class ScriptedHost:
    """A target answering ``run_shell_command`` from a dict of command -> output lines (or
    ``(False, lines)`` for a command that fails); records what ran and what was logged."""

    def __init__(self, answers: dict[str, list[str] | tuple[bool, list[str]]]):
        self.answers, self.ran, self.logged = answers, [], []

    def run_shell_command(self, command, print_output=False, print_input=False):
        text = command.get_raw_value()
        self.ran.append(text)
        answer = self.answers.get(text, [])
        ok, lines = answer if isinstance(answer, tuple) else (True, answer)
        return ok, [types.SimpleNamespace(line=line) for line in lines]

    def log_styled(self, message, **_):
        self.logged.append(message)
