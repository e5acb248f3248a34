#!/bin/bash
# shmjanitor as a Slurm Epilog: when a job ends on this node, remove the IPC objects
# its user left behind (System V segments, semaphore sets and queues; POSIX shared
# memory, semaphores and queues in /dev/shm and /dev/mqueue) that nobody holds, unless
# the user still has another job here. docs/fleet.md, section 3, says more.
#
# Install it on every compute node, as root:
#
#   install -o root -g root -m 0755 slurm-epilog.sh /etc/slurm/epilog.d/50-shmjanitor
#
# and in slurm.conf (then `scontrol reconfigure`):
#
#   Epilog=/etc/slurm/epilog.d/*     # Slurm 21.08 and later run each file in turn;
#                                    # or name this file itself
#
# slurmd runs it as root (SlurmdUser) after the job's processes on this node have
# ended, with SLURM_JOB_UID, SLURM_JOB_USER and SLURM_JOB_ID in its environment, no
# search path, and its output thrown away: so the paths below are absolute or set
# here, and what shmjanitor says goes to syslog (journald) through logger(1), tagged
# shmjanitor-epilog: `journalctl -t shmjanitor-epilog`.
#
# What it runs:  shmjanitor reap --owner UID --if-owner-gone
#   the user's orphans of every kind, whatever their age, copied to the quarantine
#   (/var/lib/shmjanitor) first, each removal logged as by the hourly timer; but only
#   if no process of the user is left on the node (this epilog and what started it
#   aside). Otherwise nothing is removed: the epilog of the user's last job here will.
#
# Exit status. A non-zero Epilog status DRAINS the node (slurmd sets it DRAIN, reason
# "Epilog error"), so:
#   shmjanitor 0   (removed what it could prove abandoned, or nothing to do)   -> 0
#   shmjanitor 75  (the user still has a process, another job: nothing removed) -> 0
#                  that is the normal case on a shared node, never a reason to drain
#   anything else  -> the same status, and the node drains:
#                  1   a removal failed, a copy could not be saved, or whether the user
#                      has a process left cannot be known (/proc hidepid): look at it
#                  2   usage or configuration error (a bad /etc/shmjanitor.toml, no such
#                      user): every job's epilog would fail the same way
#                  70  a bug in shmjanitor;  127/126  the program is missing
#   To never drain for shmjanitor, replace the last `exit "$rc"` by `exit 0`.

: "${PATH:=/usr/sbin:/usr/bin:/sbin:/bin}"  # slurmd sets none
export PATH
SHMJANITOR=${SHMJANITOR:-/opt/shmjanitor/bin/shmjanitor}
TAG="shmjanitor-epilog[${SLURM_JOB_ID:-?}]"

log() { logger -t "$TAG" -- "$*" 2>/dev/null || true; }

# The uid first: it needs no name service (LDAP, sssd) to answer at the end of a job.
owner=${SLURM_JOB_UID:-${SLURM_JOB_USER:-}}
if [ -z "$owner" ]; then
    log "neither SLURM_JOB_UID nor SLURM_JOB_USER is set: is this slurm.conf's Epilog=?"
    exit 2
fi

# Each line shmjanitor writes goes to syslog as it is written (a removal is logged
# even if the epilog is killed); a logger that fails leaves the rest to be read and
# dropped, so shmjanitor never meets a closed pipe.
"$SHMJANITOR" reap --owner "$owner" --if-owner-gone 2>&1 |
    { logger -t "$TAG" 2>/dev/null || cat >/dev/null; }
rc=${PIPESTATUS[0]}

case $rc in
    0 | 75) exit 0 ;;
esac
log "shmjanitor reap --owner $owner --if-owner-gone exited $rc: the node drains (see above)"
exit "$rc"
