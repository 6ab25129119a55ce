"""Stopping a run cleanly when the process is asked to stop (preemption, Ctrl-C)."""

import signal


class StopSignal:
    """SIGTERM/SIGINT ask the training loop to stop after the current step; the run then saves a
    checkpoint, closes its W&B run and exits with 128 + the signal's number."""

    def __enter__(self):
        self.signum, self.previous = None, {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[sig] = signal.signal(sig, self.request)
            except ValueError:  # not the main thread: leave signals to whoever owns them
                pass
        return self

    def request(self, signum, frame) -> None:
        if self.signum is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def agreed(self, dist) -> bool:
        """Whether any rank was asked to stop; that rank's signal then stops every rank (as SIGTERM where
        none came), so no rank trains on or waits for the others."""
        if dist.any(self.signum is not None) and self.signum is None:
            self.signum = signal.SIGTERM
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name
