"""`reap` on random mixes of real segments removes exactly the orphans the policy lets go.

The expected set is worked out here from how each segment was built (creator exited or
alive, attached or not, owner, key, what the config protects, min-age), not by asking
policy.py. Everything else must keep its /proc row, every field; and a dry run first
names exactly what the real run then removes, and changes nothing at all.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path

from conftest import REAL_ROOT, fresh_ipc_namespace
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from segments import Spec, attach, cli, make, mark_dest, reap_children, rows, table

UIDS = [0, 1000, 1001] if REAL_ROOT else [0]  # other uids need real root
NAMES = {0: "root", 1000: None, 1001: None}  # protect_owners by name or by uid

# One creating process: its account, how many segments, whether it lives on, whether
# its segments are keyed, and per segment whether a live process stays attached (and
# whether that one was then IPC_RMID'd: "removing").
creator = st.fixed_dictionaries(
    {
        "uid": st.sampled_from(UIDS),
        "n": st.integers(1, 3),
        "stays": st.booleans(),
        "keyed": st.booleans(),
        "attached": st.lists(st.booleans(), min_size=3, max_size=3),
        "dest": st.booleans(),
        "touch": st.booleans(),
    }
)

policy = st.fixed_dictionaries(
    {
        "young": st.sampled_from([False, False, True]),  # min_age 1h (none old enough), not 0
        "include_system": st.booleans(),
        "protect_owner": st.sampled_from([None, *UIDS]),
        "owner_by_name": st.booleans(),
        "protect_key_share": st.sampled_from([0.0, 0.3, 0.7]),
        "min_age_in_file": st.booleans(),  # min_age from the config file, not the flag
        "quarantine": st.booleans(),
    }
)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(creator, min_size=1, max_size=6), policy, st.randoms(use_true_random=False))
def test_reap_removes_exactly_the_orphans_the_policy_allows(creators, pol, rnd: random.Random):
    fresh_ipc_namespace()
    state = Path(tempfile.mkdtemp(prefix="shmjanitor-prop-"))
    try:
        keys = iter(rnd.sample(range(1, 2**32), 64))
        built: dict[int, dict] = {}  # shmid -> how it was made
        for c in creators:
            specs = [
                Spec(
                    size=rnd.randint(1, 20000),
                    key=next(keys) if c["keyed"] else None,
                    touch=c["touch"],
                )
                for _ in range(c["n"])
            ]
            m = make(*specs, stay=c["stays"], uid=c["uid"] or None)
            for shmid, spec, attached in zip(m.ids, specs, c["attached"]):
                built[shmid] = {
                    "uid": c["uid"],
                    "key": spec.key,
                    "creator_alive": c["stays"],
                    "attached": attached,
                }
                if attached:
                    attach(shmid)
                    if c["dest"]:
                        mark_dest(shmid)

        protected_keys = {
            b["key"]
            for b in built.values()
            if b["key"] is not None and rnd.random() < pol["protect_key_share"]
        }
        lines = []
        if protected_keys:
            lines.append("protect_keys = [" + ", ".join(f'"0x{k:x}"' for k in protected_keys) + "]")
        owner = pol["protect_owner"]
        if owner is not None:
            by_name = pol["owner_by_name"] and NAMES.get(owner)
            lines.append(
                f'protect_owners = ["{by_name}"]' if by_name else f"protect_owners = [{owner}]"
            )
        min_age = "1h" if pol["young"] else "0"
        flags = ["--include-system"] if pol["include_system"] else []
        if pol["min_age_in_file"]:
            lines.append(f'min_age = "{min_age}"')
        else:
            flags += ["--min-age", min_age]
        cfg = state / "shmjanitor.toml"
        cfg.write_text("\n".join(lines) + "\n")
        cfg.chmod(0o600)
        flags += ["--config", str(cfg), "--json"]
        flags += ["--state-dir", str(state / "q")] if pol["quarantine"] else ["--no-quarantine"]

        def passes(b: dict) -> bool:
            orphan = not b["creator_alive"] and not b["attached"]
            return (
                orphan
                and b["key"] not in protected_keys
                and b["uid"] != owner
                and (pol["include_system"] or b["uid"] >= 1000)
                and not pol["young"]
            )

        expected = {shmid for shmid, b in built.items() if passes(b)}
        orphans = {
            shmid for shmid, b in built.items() if not b["creator_alive"] and not b["attached"]
        }

        event(f"removes some: {bool(expected)}; keeps orphans: {bool(orphans - expected)}")
        before_text = table()
        before = rows()
        assert set(before) == set(built)

        dry = cli("reap", "--dry-run", *flags)
        assert dry.exit_code == 0, dry.output
        doc = json.loads(dry.stdout)
        assert doc["dry_run"] is True
        assert {r["id"] for r in doc["results"] if r["action"] == "would-remove"} == expected
        assert {r["id"] for r in doc["results"]} == orphans  # every orphan, and only them
        assert table() == before_text  # byte for byte: a dry run does not even attach
        assert not (state / "q").exists()

        real = cli("reap", *flags)
        assert real.exit_code == 0, real.output
        doc = json.loads(real.stdout)
        removed = {r["id"] for r in doc["results"] if r["action"] == "removed"}
        assert removed == expected
        assert {r["id"] for r in doc["results"] if r["action"] == "kept"} == orphans - expected
        assert doc["summary"]["failed"] == 0 and doc["summary"]["gone"] == 0
        after = rows()
        assert set(after) == set(built) - expected
        for shmid in after:
            assert after[shmid] == before[shmid], (shmid, built[shmid])
        if pol["quarantine"] and expected:
            q = cli("quarantine", "list", "--json", "--state-dir", str(state / "q"))
            assert {e["id"] for e in json.loads(q.stdout)["entries"]} == expected
    finally:
        reap_children()
        shutil.rmtree(state, ignore_errors=True)
