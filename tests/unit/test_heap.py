"""The start-up heap is frozen once, after every part has run `running`."""
import gc

from addons import gateway
from addons.heap import FreezeStartupHeap
from addons.startup import StartupGateOpener


def test_running_moves_the_live_heap_out_of_the_collectors_reach():
    gc.unfreeze()
    kept = [{"n": i} for i in range(1000)]  # tracked objects that stay alive
    try:
        FreezeStartupHeap().running()
        assert gc.get_freeze_count() >= len(kept)
        collected = {id(o) for o in gc.get_objects()}  # what a full collection would walk
        assert not any(id(d) in collected for d in kept)
    finally:
        gc.unfreeze()


def test_it_runs_after_every_part_that_builds_state_and_right_before_the_gate_opens():
    kinds = [type(p) for p in gateway.parts]
    assert kinds[-1] is StartupGateOpener
    assert kinds[-2] is FreezeStartupHeap
