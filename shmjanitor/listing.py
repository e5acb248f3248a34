"""`shmjanitor list`: survey, filter, sort, render."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Optional

from shmjanitor import render, survey
from shmjanitor.classify import State, Verdict
from shmjanitor.errors import ConfigError

_SORT = {
    "id": lambda v: v.segment.id,
    "key": lambda v: v.segment.key,
    "owner": lambda v: render.owner_name(v.segment.uid),
    "size": lambda v: -v.segment.size,
    "nattch": lambda v: -v.segment.nattch,
    "cpid": lambda v: v.segment.cpid,
    "idle": lambda v: -v.idle_for,
    "state": lambda v: list(State).index(v.state),
}


def select(verdicts: list[Verdict], states: set[State], uid: Optional[int]) -> list[Verdict]:
    return [
        v
        for v in verdicts
        if (not states or v.state in states) and (uid is None or v.segment.uid == uid)
    ]


def run(
    *,
    states: set[State],
    owner: Optional[str],
    sort: str,
    exact_bytes: bool,
    fmt: render.Format,
    metrics_file: Optional[Path],
    out: IO[str],
    proc_shm: Path = survey.scan.PROC_SHM,
) -> None:
    try:
        uid = None if owner is None else render.uid_of(owner)
    except ValueError as e:
        raise ConfigError(f"--owner: {e}") from None
    sv = survey.take(proc_shm)
    shown = select(sv.verdicts, states, uid)
    if sort != "id":
        shown.sort(key=_SORT[sort])
    if fmt is render.Format.JSON:
        out.writelines(render.json_chunks(sv, shown))
    elif fmt is render.Format.TABLE:
        render.table(sv, shown, exact_bytes, out)
    else:
        render.plain(shown, exact_bytes, out)
    if metrics_file is not None:  # all segments, whatever the filters showed
        from shmjanitor import metrics

        metrics.write(metrics_file, sv.verdicts, run=None, now=sv.taken_at)
