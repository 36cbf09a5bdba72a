#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by .ci/slurm-up.sh.
# Bounded in time; never fails when the daemons are not running.
set -uo pipefail

log() { printf '[slurm-down] %s\n' "$*" >&2; }

# pid of a daemon: from its pid file if it is alive, else by exact name
daemon_pids() {
    local name=$1 pidfile=$2 pid
    if [[ -r $pidfile ]]; then
        pid=$(cat "$pidfile" 2>/dev/null || true)
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
            echo "$pid"
            return
        fi
    fi
    pgrep -x "$name" 2>/dev/null || true
}

stop_daemon() {
    local name=$1 pidfile=$2 pids
    pids=$(daemon_pids "$name" "$pidfile")
    [[ -z $pids ]] && return 0
    log "stopping $name ($pids)"
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 1 40); do   # up to 10 s
        pids=$(daemon_pids "$name" "$pidfile")
        [[ -z $pids ]] && return 0
        sleep 0.25
    done
    log "$name did not stop, sending SIGKILL"
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    return 0
}

# cancel whatever is still queued so slurmd has nothing to wait for
if command -v scancel >/dev/null && pgrep -x slurmctld >/dev/null; then
    timeout 10 scancel --user=root >/dev/null 2>&1 || true
fi

stop_daemon slurmd /run/slurm/slurmd.pid
stop_daemon slurmctld /run/slurm/slurmctld.pid
stop_daemon munged /run/munge/munged.pid

exit 0
