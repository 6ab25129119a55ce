"""User-facing errors: the CLIs print them as one line and exit with code 2."""

import sys
from contextlib import contextmanager
from typing import Optional

from mindiff.checkpoint import CheckpointError
from mindiff.config import ConfigError
from mindiff.data import DatasetError

USER_ERRORS = (ConfigError, DatasetError, CheckpointError)


def user_error(e: BaseException) -> Optional[BaseException]:
    """The user error behind `e`, looking through wrappers such as Hydra's InstantiationException."""
    while e is not None:
        if isinstance(e, USER_ERRORS):
            return e
        e = e.__cause__
    return None


@contextmanager
def exit_on_user_error(prog: str):
    try:
        yield
    except Exception as e:
        cause = user_error(e)
        if cause is None:
            raise
        print(f"{prog}: error: {cause}", file=sys.stderr)
        sys.exit(2)
