"""The stable codes of the rules that decide: `rule` beside every reason in the JSON of
`list`, `reap`, `rm` and `explain`, so that scripts never parse sentences. A code names
the rule, never its evidence (the reason says that); codes are only ever added, never
renamed. The README's table "Rule codes" documents each one; tests/test_explain.py
keeps this module and that table in step.

Where each comes from: classify.py (the state), policy.py (reap keeps an orphan),
remove.py and reaping.py (what a removal did).
"""

from __future__ import annotations

# --- the state (classify.py, in its order) -----------------------------------------
REMOVING = "removing"  # SHM_DEST: IPC_RMID called, freed at the last detach
ATTACHED = "attached"  # shm: nattch > 0
WAITING = "waiting"  # sem: a task waits in semop (GETNCNT/GETZCNT)
BLOCKED = "blocked"  # msg: a task is blocked in msgrcv/msgsnd on it
HELD = "held"  # POSIX: a process has it open or mapped (and: a write lease refused)
CREATOR_ALIVE = "creator-alive"  # cpid, or the pid a POSIX name carries, alive
LAST_USER_ALIVE = "last-user-alive"  # lpid, sempid, lspid or lrpid alive
OWNER_ALIVE = "owner-alive"  # a POSIX object's owner has a process: may open it again
EVIDENCE_UNREADABLE = "evidence-unreadable"  # the kind could not read all its evidence
PID_UNSEEN = "pid-unseen"  # a party's pid is 0: outside our PID namespace
PROC_HIDDEN = "proc-hidden"  # /proc mounted with hidepid hides the party
PROC_FOREIGN = "proc-foreign"  # /proc shows another PID namespace
CLOCK_STEP = "clock-step"  # a late start a step of the clock could explain
USER_HAS_PROCESSES = "user-has-processes"  # a set's creating user lives: which process?
CANNOT_KNOW = "cannot-know"  # any other "cannot know" (access denied, not looked up)
CREATOR_DEAD = "creator-dead"  # orphan: the creator (and any last user) is dead
LAST_USER_DEAD = "last-user-dead"  # orphan: every last user/operator/sender is dead
USER_GONE = "user-gone"  # orphan: the user it names has no process left
NEVER_USED = "never-used"  # orphan: the table names nobody (a queue never used)

# --- reap's policy (policy.py, in its order) -----------------------------------------
PROTECTED_KEY = "protected-key"
PROTECTED_PATH = "protected-path"
PROTECTED_OWNER = "protected-owner"
SYSTEM_ACCOUNT = "system-account"
YOUNGER_THAN_MIN_AGE = "younger-than-min-age"
NEEDS_ROOT = "needs-root"
YOUNGER_THAN_POSIX_IDLE_AFTER = "younger-than-posix-idle-after"
POSIX_IDLE_AFTER = "posix-idle-after"  # an idle POSIX object idle longer: removed

# --- a removal (remove.py, reaping.py) -----------------------------------------------
NAMED = "named"  # rm: named on the command line
FORCED = "forced"  # rm --force: named, and in use
NOT_PERMITTED = "not-permitted"  # rm: only its owner, creator or root may remove it
CHANGED_SINCE_SCAN = "changed-since-scan"  # the re-check found it used or different
LARGER_THAN_QUARANTINE_MAX = "larger-than-quarantine-max"
QUARANTINE_REFUSED = "quarantine-refused"  # budget, free-space floor, a queue's messages
QUARANTINE_FAILED = "quarantine-failed"  # the copy could not be written
GONE = "gone"  # removed by someone else first
PERMISSION_DENIED = "permission-denied"  # EPERM/EACCES from the kernel
ERROR = "error"  # any other failure of a call
INTERRUPTED = "interrupted"  # SIGINT/SIGTERM stopped the run first

# Every code, in the order above.
ALL = tuple(v for k, v in list(globals().items()) if k.isupper() and isinstance(v, str))
