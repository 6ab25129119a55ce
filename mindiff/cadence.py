"""When a run writes what: at the end of each pass over the data, the tag, the snapshot, the grid, the
evaluation and whether the run ends, decided by a pure function of where the run stands and the trainer
settings (so it is unit-tested without a run); and how that side work runs, so it never costs the epoch."""

from dataclasses import dataclass
from typing import Callable, Container, Optional, Tuple

from mindiff.errors import not_fatal
from mindiff.signals import Stopped, raise_if_stopping


@dataclass(frozen=True)
class EpochActions:
    epoch: int  # epochs completed
    tag: str  # names the grid and the snapshot: epoch_0003 after a whole epoch, step_000042 after part of one
    snapshot: bool  # keep checkpoints/{tag}.pt beside last.pt
    samples: bool
    evaluate: bool
    run_ends: bool


def epoch_actions(epoch: int, step: int, steps_per_epoch: int, *, epochs: int, sample_every: int,
                  sample_epochs: Container[int], ckpt_every: int, eval_every: Optional[int], stopped: bool = False,
                  signalled: bool = False, eval_at_max_steps: bool = False) -> EpochActions:
    """What the end of a pass over the data does. The pass began in `epoch` (0-based) and ended at `step`:
    at the end of that epoch, or before it if `stopped` by max_steps or, `signalled`, by a signal.
    The run ends at its last epoch or at max_steps, with a grid and an evaluation (at max_steps, a
    smoke run's stop, only `eval_at_max_steps`); a signal ends the process, not the run: a resume continues it."""
    done = step == (epoch + 1) * steps_per_epoch
    epoch += int(done)
    asked_for = done and epoch in sample_epochs
    finished = epoch == epochs
    run_ends = finished or (stopped and not signalled)
    return EpochActions(epoch=epoch, tag=f"epoch_{epoch:04d}" if done else f"step_{step:06d}",
                        snapshot=asked_for or (done and epoch % ckpt_every == 0),
                        samples=run_ends or asked_for or (done and epoch % sample_every == 0),
                        evaluate=bool(eval_every) and ((run_ends and (finished or eval_at_max_steps))
                                                       or (done and epoch % eval_every == 0)),
                        run_ends=run_ends)


def side_work(act: EpochActions, write_samples: Callable[[], None],
              evaluate: Callable[[], dict]) -> Tuple[dict, Optional[str]]:
    """The grid and the evaluation that `act` asks for, once the epoch's checkpoint is written. One that fails
    is one warning line and the run goes on; a stop request abandons them at their next step (nothing of
    them is saved). Returns the scores, and what was abandoned (None if nothing)."""
    scores, work = {}, None
    try:
        raise_if_stopping()
        if act.samples:
            with not_fatal(work := f"the sample grid at {act.tag}"):
                write_samples()
        if act.evaluate:
            with not_fatal(work := f"the evaluation at {act.tag}"):
                scores = evaluate()
    except Stopped:
        return scores, work or "the side work"
    return scores, None
