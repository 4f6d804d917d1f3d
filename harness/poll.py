"""One wait loop for the harness and the tests: ask until the answer is there, or say what never came.

    from harness.poll import poll
    row = poll(lambda: sql("select ... "), until=bool, timeout=60, what="the reply row")

A timeout raises :class:`PollTimeout` naming ``what``, the time waited and the last
answer seen, so a failing test says what it was waiting for instead of returning
a stale value.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class PollTimeout(AssertionError):
    """What was awaited did not come in time (an AssertionError so pytest reports it as a failure)."""


def poll(probe: Callable[[], T], *, until: Callable[[T], bool] = bool, timeout: float, what: str,
         interval: float = 0.5, tolerate: tuple[type[BaseException], ...] = ()) -> T:
    """Call ``probe`` until ``until(answer)`` holds; return that answer.

    + probe: asked once per ``interval`` seconds
    + until: the condition on the answer (default: truthy)
    + timeout: seconds before :class:`PollTimeout`
    + what: what is awaited, for the error
    + tolerate: exceptions that mean "not yet" (e.g. ConnectionError while a service starts)
    """
    deadline = time.monotonic() + timeout
    last: object = "no answer yet"
    while True:
        try:
            answer = probe()
        except tolerate as error:
            last = f"{type(error).__name__}: {error}"
        else:
            if until(answer):
                return answer
            last = answer
        if time.monotonic() >= deadline:
            raise PollTimeout(f"{what}: not there after {timeout:g} s; last answer: {str(last)[-1500:]}")
        time.sleep(interval)
