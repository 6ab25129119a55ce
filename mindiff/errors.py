"""User-facing errors: the CLIs print them as one line and exit with code 2."""

import sys
from contextlib import contextmanager

from mindiff.checkpoint import CheckpointError
from mindiff.config import ConfigError
from mindiff.data import DatasetError

USER_ERRORS = (ConfigError, DatasetError, CheckpointError)


@contextmanager
def exit_on_user_error(prog: str):
    try:
        yield
    except USER_ERRORS as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
