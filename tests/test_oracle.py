"""The kernel as oracle: with shm_rmid_forced, it destroys exactly the segments whose
creator exited and nobody has attached (ipc/shm.c, shm_destroy_orphaned). Our `orphan`
set must be that set, on random mixes of real segments."""

from __future__ import annotations

import os
import random
from pathlib import Path

from conftest import fresh_ipc_namespace
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from segments import Spec, attach, make, mark_dest, reap_children, rows

from shmjanitor import survey

RMID_FORCED = Path("/proc/sys/kernel/shm_rmid_forced")

# One creator process: how many segments, whether it stays alive, whether its segments
# are keyed, and which of them get a live attacher (some of those also IPC_RMID'd).
creator = st.fixed_dictionaries({
    "n": st.integers(1, 4),
    "stays": st.booleans(),
    "keyed": st.booleans(),
    "attached": st.lists(st.booleans(), min_size=4, max_size=4),
    "dest": st.booleans(),
    "touch": st.booleans(),
})  # fmt: skip


def kernel_orphans() -> set[int]:
    """Ids the kernel destroys when shm_rmid_forced is switched on (then off again)."""
    before = set(rows())
    RMID_FORCED.write_text("1")
    RMID_FORCED.write_text("0")
    return before - set(rows())


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(creator, min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_orphan_set_equals_the_kernels(creators, rnd: random.Random):
    fresh_ipc_namespace()
    keys = iter(rnd.sample(range(1, 2**32), 24))  # distinct: a key can name one segment only
    try:
        for c in creators:
            specs = [
                Spec(size=rnd.randint(1, 20000), key=next(keys) if c["keyed"] else None,
                     touch=c["touch"])
                for _ in range(c["n"])
            ]  # fmt: skip
            m = make(*specs, stay=c["stays"])
            for shmid, attached in zip(m.ids, c["attached"]):
                if attached:
                    attach(shmid)
                    if c["dest"]:
                        mark_dest(shmid)
        ours = {v.segment.id for v in survey.take().verdicts if v.state.value == "orphan"}
        assert ours == kernel_orphans()
    finally:
        reap_children()


def test_oracle_sees_a_plain_exited_creator():
    # The oracle itself, on the simplest case, so a broken oracle cannot pass vacuously.
    gone = make(Spec(), Spec()).ids
    kept = make(Spec(), stay=True).ids
    assert kernel_orphans() == set(gone)
    assert set(rows()) == set(kept)
    assert os.path.exists(RMID_FORCED) and RMID_FORCED.read_text().strip() == "0"
