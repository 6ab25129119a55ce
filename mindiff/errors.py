"""What a user can fix: errors whose message says what to change. The CLIs print one of these as one
line and exit with code 2; anything else is a bug and keeps its traceback."""

import logging
from contextlib import contextmanager
from typing import List, Optional, Set

log = logging.getLogger("mindiff")


class UserError(Exception):
    """Base of every error a user can act on; the message names the key, file or folder and what to do."""


class NonFiniteLoss(UserError, FloatingPointError):
    """The training loss became nan or inf; the message names the step and what was kept."""


def lines(text) -> List[str]:
    """The non-empty lines of a message, stripped (library errors often span several)."""
    return [line.strip() for line in str(text).splitlines() if line.strip()]


def one_line(text) -> str:
    """A message folded onto one line."""
    return " ".join(lines(text))


def first_line(text) -> str:
    """What a message says first (the rest is often a traceback or a long listing)."""
    return (lines(text) or [""])[0]


def last_line(text) -> str:
    """What a message says last (torch's load_state_dict ends with the mismatch that matters)."""
    return (lines(text) or [""])[-1]


@contextmanager
def not_fatal(what: str, seen: Optional[Set[str]] = None):
    """Work beside the training (grids, evaluations, the GIF, W&B calls) that fails is logged as one line
    and the run goes on; with `seen`, each `what` is reported once."""
    try:
        yield
    except Exception as e:
        if seen is None or what not in seen:
            log.warning("%s failed, training goes on: %s", what, one_line(f"{type(e).__name__}: {e}"))
        if seen is not None:
            seen.add(what)
