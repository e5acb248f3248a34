#!/bin/bash
# shmjanitor as a PBS/Torque epilogue: when a job ends on this node, remove the IPC
# objects its user left behind (System V segments, semaphore sets and queues; POSIX
# shared memory, semaphores and queues in /dev/shm and /dev/mqueue) that nobody holds,
# unless the user still has another job here. docs/fleet.md, section 3, says more.
#
# Install it on every compute node, as root (TORQUE_HOME is often /var/spool/torque;
# PBS Pro and OpenPBS: $PBS_HOME/mom_priv, often /var/spool/pbs/mom_priv):
#
#   install -o root -g root -m 0500 pbs-epilogue.sh $TORQUE_HOME/mom_priv/epilogue
#   ln -s epilogue $TORQUE_HOME/mom_priv/epilogue.parallel    # Torque's sister nodes
#
# (an epilogue that is not root's, or that others may write, is not run). The MOM runs
# `epilogue` as root on the job's first node and Torque's `epilogue.parallel` on the
# others, once the job's processes have ended, with an empty environment and these
# arguments: $1 the job id, $2 the job's user name, $3 its group, then the job name,
# session id, limits, resources used, queue, account and exit code. Its output would
# go to the job's own output file: here it goes to syslog (journald) through
# logger(1) instead, tagged shmjanitor-epilog: `journalctl -t shmjanitor-epilog`.
#
# What it runs:  shmjanitor reap --owner USER --if-owner-gone
#   the user's orphans of every kind, whatever their age, copied to the quarantine
#   (/var/lib/shmjanitor) first, each removal logged as by the hourly timer; but only
#   if no process of the user is left on the node (this epilogue and what started it
#   aside). Otherwise nothing is removed: the epilogue of the user's last job will.
#
# Exit status: the MOM records a non-zero one in its log. As in the Slurm epilog
# (slurm-epilog.sh), "the user still has another job" is not a failure:
#   shmjanitor 0 (done) and 75 (the user still has a process: nothing removed) -> 0
#   anything else -> the same status: 1 a removal failed, a copy could not be saved,
#   or whether the user has a process left cannot be known; 2 usage or configuration
#   error (a bad /etc/shmjanitor.toml, no such user); 70 a bug; 127/126 no program.

: "${PATH:=/usr/sbin:/usr/bin:/sbin:/bin}"  # the MOM passes an empty environment
export PATH
SHMJANITOR=${SHMJANITOR:-/opt/shmjanitor/bin/shmjanitor}
TAG="shmjanitor-epilog[${1:-?}]"

log() { logger -t "$TAG" -- "$*" 2>/dev/null || true; }

owner=${2:-}
if [ -z "$owner" ]; then
    log "no user name in argument 2: is this the MOM's epilogue?"
    exit 2
fi

# Each line shmjanitor writes goes to syslog as it is written (a removal is logged
# even if the epilogue is killed); a logger that fails leaves the rest to be read and
# dropped, so shmjanitor never meets a closed pipe.
"$SHMJANITOR" reap --owner "$owner" --if-owner-gone 2>&1 |
    { logger -t "$TAG" 2>/dev/null || cat >/dev/null; }
rc=${PIPESTATUS[0]}

case $rc in
    0 | 75) exit 0 ;;
esac
log "shmjanitor reap --owner $owner --if-owner-gone exited $rc (see above)"
exit "$rc"
