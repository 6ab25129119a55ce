"""What the CLIs share: key=value arguments into a typed schema, and user errors printed as one
line with exit code 2."""

import re
import sys
from contextlib import contextmanager
from typing import Callable, Optional, Sequence, Type, TypeVar

from omegaconf import OmegaConf

from mindiff.values import ConfigError, check_values
from mindiff.errors import UserError, first_line
from mindiff.signals import exit_on_stop


def user_error(e: BaseException) -> Optional[BaseException]:
    """The user error behind `e`, looking through wrappers: Hydra's, and OmegaConf's for an error raised in a
    resolver (which chains it only as the context)."""
    while e is not None:
        if isinstance(e, UserError):
            return e
        e = e.__cause__ or e.__context__
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


def check_cli_values(group: str, **values) -> None:
    """A CLI's arguments that are also config keys (`steps` is schedule.sample_steps, ...) pass the same
    value checks; the message names the argument as the user typed it."""
    given = {key: value for key, value in values.items() if value is not None}
    try:
        check_values({group: {CONFIG_KEY.get(key, key): value for key, value in given.items()}})
    except ConfigError as e:
        message = str(e).removeprefix(f"{group}.")
        for key in given:
            message = re.sub(rf"^{CONFIG_KEY.get(key, key)}\b", key, message)
        raise ConfigError(message) from None


CONFIG_KEY = {"steps": "sample_steps"}  # a CLI argument whose config key has another name


def sampling_overrides(steps: Optional[int], sampler: Optional[str], guidance: Optional[float]) -> dict:
    """A sampling CLI's steps/sampler/guidance as schedule settings; those not given keep the run's own
    (whether guidance suits the model is checked against the checkpoint: build.from_checkpoint)."""
    check_cli_values("schedule", steps=steps, sampler=sampler, guidance=guidance)
    given = {"sample_steps": steps, "sampler": sampler, "guidance": guidance}
    return {key: value for key, value in given.items() if value is not None}


T = TypeVar("T")
R = TypeVar("R")


def run_command(prog: str, schema: Type[T], command: Callable[[T], R], argv: Optional[Sequence[str]], doc: str) -> R:
    """A CLI's body: its key=value arguments parsed into `schema` and passed to `command`; a user error
    exits with one line and code 2. The usage shown is the first line of the module's `doc`."""
    with exit_on_stop(lambda line: print(f"{prog}: {line}", file=sys.stderr)), exit_on_user_error(prog):
        return command(parse_args(schema, argv, first_line(doc)))


def parse_args(schema: Type[T], argv: Optional[Sequence[str]], usage: str) -> T:
    """`key=value` arguments (OmegaConf syntax, like Hydra's overrides) into a dataclass instance."""
    try:
        args = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_cli(list(sys.argv[1:] if argv is None else argv)))
        return OmegaConf.to_object(args)
    except Exception as e:  # OmegaConf's messages name the key; keep them to one line
        raise ConfigError(f"{first_line(e)} (usage: {usage})") from None
