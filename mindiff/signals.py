"""Stopping cleanly when the process is asked to stop (preemption, Ctrl-C): within a step, in one line.

The process's current request is kept here, so long work (sampling steps, scoring, encoding and
classifier batches) checks it with `raise_if_stopping()` instead of being handed a signal object."""

import signal
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Optional, TypeVar


class Stopped(BaseException):
    """A stop request, raised where the work it ends is abandoned. A BaseException, like KeyboardInterrupt,
    so that no `except Exception` (side work that may fail and is only logged) swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


T = TypeVar("T")
_current: Optional["StopSignal"] = None  # the StopSignal this process runs under, if any


def raise_if_stopping() -> None:
    """Called between the steps of long work: a stop request ends it there (at once outside a StopSignal)."""
    if _current is not None and _current.signum is not None:
        raise Stopped(_current.signum)


def checked(steps: Iterable[T]) -> Iterator[T]:
    """`steps`, with a stop request checked before each: sampling steps, batches of long work."""
    for step in steps:
        raise_if_stopping()
        yield step


class StopSignal:
    """SIGTERM/SIGINT. Outside `deferring()` a signal raises Stopped at once: there is nothing to save yet.
    Inside it the first signal is only recorded: the training loop finishes its step, saves and exits with
    128 + the signal's number, and side work ends at its next step (raise_if_stopping). A second signal
    raises Stopped at once, except in `shielded()` writes."""

    def __enter__(self):
        global _current
        self.signum, self.previous, self.outer = None, {}, _current
        self.deferred = self.shield = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[sig] = signal.signal(sig, self.request)
            except ValueError:  # not the main thread: leave signals to whoever owns them
                pass
        _current = self
        return self

    def request(self, signum, frame) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        if not self.shield and not (first and self.deferred):
            raise Stopped(self.signum)

    @contextmanager
    def deferring(self):
        self.deferred = True
        try:
            yield self
        finally:
            self.deferred = False

    def __exit__(self, exc_type, *exc) -> None:
        global _current
        # leaving on a stop request, the process is on its way out: another signal there is no news, and would
        # only make Python print a traceback while it unwinds
        exiting = self.signum is not None and exc_type is not None and issubclass(exc_type, (SystemExit, Stopped))
        for sig, handler in self.previous.items():
            signal.signal(sig, signal.SIG_IGN if exiting else handler)
        _current = self.outer

    def agreed(self, dist) -> bool:
        """Whether any rank was asked to stop; that rank's signal then stops every rank (as SIGTERM where
        none came), so no rank trains on or waits for the others."""
        if dist.any(self.signum is not None) and self.signum is None:
            self.signum = signal.SIGTERM
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


@contextmanager
def shielded():
    """Writes that a second signal must not tear (an epoch's checkpoint and its metrics line) finish first."""
    stop = _current
    before = stop is not None and stop.shield
    if stop is not None:
        stop.shield = True
    try:
        yield
    finally:
        if stop is not None:
            stop.shield = before


@contextmanager
def exit_on_stop(say: Callable[[str], None]):
    """The body under a StopSignal (yielded); a Stopped that ends it is said in one line by `say`, and the
    process exits with 128 + the signal's number instead of a traceback."""
    try:
        with StopSignal() as stop:
            yield stop
    except Stopped as e:
        say(f"stopped by {e}")
        raise SystemExit(128 + e.signum) from None
