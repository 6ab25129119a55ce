"""A property of every CLI that reads a checkpoint: whatever a file holds, it ends with exit 0 or 2 (one line),
never a traceback, within a time limit and without growing memory. Each genuine checkpoint is tampered with at
every leaf of its stored config (and its embedded autoencoder's) and at every top-level entry, with 0, -1, nan,
inf, 10**12, a value of the wrong type and a missing key, and each reader runs on every variant."""

import multiprocessing
import os
from collections import Counter

import pytest

from mindiff.checkpoint import load_checkpoint

import hostile

READERS = {  # a genuine run -> the CLIs that read its checkpoint
    "mlp2": ["sample", "evaluate", "resume mlp2"],
    "ae": ["reconstruct", "evaluate", "resume ae", "autoencoder.ckpt"],
    "ldm": ["sample", "evaluate", "resume ldm"],
}


def cases(genuine, run: str):
    state = load_checkpoint(genuine / run / "checkpoints" / "last.pt")
    paths = [("config", *p) for p in hostile.leaves(state["config"])] + [(key,) for key in state]
    for path in paths:
        for label in hostile.hostile_values(hostile.at(state, path)):
            yield run, path, label, READERS[run]
    if state.get("autoencoder"):  # every reader reads an embedded autoencoder's config alike (build.read_checkpoint,
        # objective_for); the ae run puts each reader of an autoencoder's own checkpoint through these leaves
        for path in hostile.leaves(state["autoencoder"]["config"]):
            for label in hostile.hostile_values(hostile.at(state["autoencoder"]["config"], path)):
                yield run, ("autoencoder", "config", *path), label, READERS[run][:1]


def numeric(state: dict, path: tuple) -> bool:
    value = hostile.at(state, path)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and path[0] in ("config", "autoencoder")


@pytest.mark.parametrize("run", list(READERS))
def test_every_reader_ends_cleanly_on_every_hostile_value(genuine, run):
    todo = list(cases(genuine, run))
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no forked torch threads
    with ctx.Pool(max(1, min(2, os.cpu_count() or 1)), initializer=hostile.start_worker,
                  initargs=(str(genuine), os.environ["MINDIFF_CACHE"]), maxtasksperchild=400) as pool:
        results = [result for variant in pool.map(hostile.run_variant, todo, chunksize=4) for result in variant]
    if os.environ.get("HOSTILE_TIMES"):  # where the time goes, by reader and outcome
        times = Counter()
        for case, outcome, _, seconds in results:
            times[(case[3], outcome)] += seconds
        with open(os.environ["HOSTILE_TIMES"], "a") as f:
            f.write(f"{run}: {sorted(times.items(), key=lambda kv: -kv[1])}\n")
            f.writelines(f"{case} {outcome} {detail}\n" for case, outcome, detail, _ in results if outcome not in (0, 2))
    state = load_checkpoint(genuine / run / "checkpoints" / "last.pt")
    bad = [(case, outcome, detail) for case, outcome, detail, _ in results if outcome not in (0, 2)]
    # a number that cannot be one (nan, inf, a word) is refused wherever it stands in a stored config
    accepted = [case for case, outcome, _, _ in results
                if outcome == 0 and case[2] in ("nan", "inf", "wrong type") and numeric(state, case[1])]
    summary = Counter(outcome for _, outcome, _, _ in results)
    assert not bad, f"{len(bad)} of {len(results)} cases ended badly ({dict(summary)}); first: {bad[:3]}"
    assert not accepted, f"accepted, exit 0: {accepted[:10]}"
    assert summary[2] > summary[0], summary  # most hostile values are refused
