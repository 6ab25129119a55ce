"""What the end of each pass over the data does (tag, snapshot, grid, evaluation, end of run), decided
without a run: `epoch_actions` is a pure function of the position and the trainer settings."""

import dataclasses

import pytest
from omegaconf import OmegaConf

from mindiff.cadence import EpochActions, epoch_actions

STEPS = 8  # steps per epoch
QUIET = dict(epochs=10, sample_every=100, sample_epochs=[], ckpt_every=100, eval_every=None)


def actions(epoch: int, step: int, **settings) -> EpochActions:
    """The end of a pass that began in `epoch` (0-based) and ended at `step`; settings default to doing nothing."""
    return epoch_actions(epoch, step, STEPS, **{**QUIET, **settings})


def test_a_whole_epoch_on_the_sample_and_checkpoint_cadence_writes_both():
    assert actions(1, 16, sample_every=2, ckpt_every=2) == EpochActions(
        epoch=2, tag="epoch_0002", snapshot=True, samples=True, evaluate=False, run_ends=False)


def test_a_whole_epoch_off_the_cadence_writes_only_last_pt():
    assert actions(2, 24, sample_every=2, ckpt_every=2, eval_every=2) == EpochActions(
        epoch=3, tag="epoch_0003", snapshot=False, samples=False, evaluate=False, run_ends=False)


def test_sample_and_checkpoint_cadences_are_independent():
    assert actions(2, 24, sample_every=3, ckpt_every=2) == EpochActions(
        epoch=3, tag="epoch_0003", snapshot=False, samples=True, evaluate=False, run_ends=False)
    assert actions(3, 32, sample_every=3, ckpt_every=2) == EpochActions(
        epoch=4, tag="epoch_0004", snapshot=True, samples=False, evaluate=False, run_ends=False)


def test_eval_every_evaluates_on_its_epochs_only():
    assert actions(3, 32, eval_every=2).evaluate is True
    assert actions(4, 40, eval_every=2).evaluate is False
    assert actions(0, 8, eval_every=1).evaluate is True


def test_sample_epochs_force_a_grid_and_a_snapshot_off_the_cadence():
    assert actions(2, 24, sample_epochs=[3, 7]) == EpochActions(
        epoch=3, tag="epoch_0003", snapshot=True, samples=True, evaluate=False, run_ends=False)
    assert actions(3, 32, sample_epochs=[3, 7]) == EpochActions(
        epoch=4, tag="epoch_0004", snapshot=False, samples=False, evaluate=False, run_ends=False)


def test_sample_epochs_from_the_config_are_a_list_config():
    assert actions(2, 24, sample_epochs=OmegaConf.create([3])).snapshot is True


def test_the_last_epoch_ends_the_run_with_a_grid_and_an_evaluation():
    assert actions(9, 80, ckpt_every=3, eval_every=4) == EpochActions(
        epoch=10, tag="epoch_0010", snapshot=False, samples=True, evaluate=True, run_ends=True)


def test_the_last_epoch_on_the_checkpoint_cadence_also_keeps_a_snapshot():
    assert actions(9, 80, ckpt_every=5).snapshot is True


def test_max_steps_mid_epoch_ends_the_run_at_a_step_tag_without_a_snapshot_or_an_evaluation():
    assert actions(0, 3, stopped=True, sample_every=1, ckpt_every=1, eval_every=1) == EpochActions(
        epoch=0, tag="step_000003", snapshot=False, samples=True, evaluate=False, run_ends=True)


def test_a_smoke_run_stopped_by_max_steps_is_evaluated_only_when_asked():
    assert actions(0, 3, stopped=True, eval_every=1, eval_at_max_steps=True).evaluate is True
    assert actions(1, 12, stopped=True, eval_every=5, eval_at_max_steps=True).evaluate is True
    assert actions(1, 12, stopped=True, eval_every=5).evaluate is False
    assert actions(1, 12, stopped=True, eval_every=None, eval_at_max_steps=True).evaluate is False


def test_max_steps_on_an_eval_epoch_keeps_that_epochs_evaluation():
    assert actions(1, 16, stopped=True, eval_every=2).evaluate is True


def test_max_steps_mid_epoch_on_a_sample_epoch_keeps_no_snapshot():
    assert actions(2, 20, stopped=True, sample_epochs=[3]) == EpochActions(
        epoch=2, tag="step_000020", snapshot=False, samples=True, evaluate=False, run_ends=True)


def test_max_steps_at_the_end_of_an_epoch_uses_the_epoch_tag():
    assert actions(1, 16, stopped=True, ckpt_every=2) == EpochActions(
        epoch=2, tag="epoch_0002", snapshot=True, samples=True, evaluate=False, run_ends=True)


def test_a_signal_mid_epoch_saves_under_a_step_tag_and_does_not_end_the_run():
    assert actions(2, 20, stopped=True, signalled=True, sample_every=1, ckpt_every=1, eval_every=1) == EpochActions(
        epoch=2, tag="step_000020", snapshot=False, samples=False, evaluate=False, run_ends=False)


def test_a_signal_at_the_end_of_an_epoch_does_that_epochs_work_but_no_final_work():
    assert actions(1, 16, stopped=True, signalled=True, sample_every=2, ckpt_every=2, eval_every=4) == EpochActions(
        epoch=2, tag="epoch_0002", snapshot=True, samples=True, evaluate=False, run_ends=False)


def test_a_signal_in_the_last_step_of_the_last_epoch_still_ends_the_run():
    assert actions(9, 80, stopped=True, signalled=True, eval_every=5) == EpochActions(
        epoch=10, tag="epoch_0010", snapshot=False, samples=True, evaluate=True, run_ends=True)


def test_a_pass_resumed_mid_epoch_is_tagged_by_where_it_ends():
    assert actions(4, 40, sample_every=5) == EpochActions(
        epoch=5, tag="epoch_0005", snapshot=False, samples=True, evaluate=False, run_ends=False)
    assert actions(4, 37, stopped=True) == EpochActions(
        epoch=4, tag="step_000037", snapshot=False, samples=True, evaluate=False, run_ends=True)


@pytest.mark.parametrize("epoch,step,stopped", [(0, 8, False), (9, 80, False), (0, 3, True), (9, 80, True)])
def test_eval_every_none_never_evaluates(epoch, step, stopped):
    assert actions(epoch, step, stopped=stopped, eval_every=None, sample_every=1).evaluate is False


def test_a_whole_run_writes_what_the_cli_test_expects():
    """trainer.epochs=4 ckpt_every=2 sample_every=2 (tests/test_train_cli.py): snapshots and grids at 2 and 4."""
    ends = [actions(e, (e + 1) * STEPS, epochs=4, sample_every=2, ckpt_every=2, eval_every=1) for e in range(4)]
    assert [a.tag for a in ends if a.snapshot] == ["epoch_0002", "epoch_0004"]
    assert [a.tag for a in ends if a.samples] == ["epoch_0002", "epoch_0004"]
    assert [a.evaluate for a in ends] == [True] * 4
    assert [a.run_ends for a in ends] == [False, False, False, True]


def test_the_actions_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        actions(0, 8).samples = False
