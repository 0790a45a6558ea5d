#!/usr/bin/env bash
# A single-node SLURM cluster on localhost, for the `slurm` tests and for trying sweeps without a cluster.
#
#   scripts/slurm_local.sh start    # prints `export SLURM_CONF=...`; eval it to use sbatch/squeue/sinfo
#   scripts/slurm_local.sh status   # sinfo of the running cluster (exit 1 when none is running)
#   scripts/slurm_local.sh stop     # stops slurmd, slurmctld, munged and removes the state directory
#   scripts/slurm_local.sh env      # prints the export line of the running cluster
#
# Everything (munge key and socket, slurm.conf, state, spool, pid and log files) lives under one
# directory, $SLURM_LOCAL_DIR (default /tmp/robust-slurm), so the cluster touches nothing system-wide and
# `stop` leaves nothing behind. Needs root (SlurmUser=root) and Debian's `slurm-wlm` and `munge`
# (.ci/slurm_setup.sh installs them).
set -euo pipefail

DIR="${SLURM_LOCAL_DIR:-/tmp/robust-slurm}"
CONF="$DIR/slurm.conf"
HOST="$(hostname)"

die() { echo "slurm_local: $*" >&2; exit 1; }

need() {
    for b in munged slurmctld slurmd sinfo sbatch; do
        command -v "$b" >/dev/null 2>&1 || die "'$b' not found: install slurm-wlm and munge (.ci/slurm_setup.sh)"
    done
    [ "$(id -u)" = 0 ] || die "must run as root (SlurmUser=root)"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_conf() {
    local cpus mem
    cpus="$(nproc)"
    # RealMemory in MB, a little under the machine's, so that --mem requests are checked against it.
    mem="$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)"
    cat >"$CONF" <<EOF
ClusterName=robustlocal
SlurmctldHost=$HOST
AuthType=auth/munge
AuthInfo=socket=$DIR/munge/munge.socket
CryptoType=crypto/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort=${SLURM_LOCAL_CTLD_PORT:-16817}
SlurmdPort=${SLURM_LOCAL_D_PORT:-16818}
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobRequeue=1
# Fast turnaround for tests: short kill wait, no minimum age before a finished job is purged from memory
# is needed, but keep finished jobs visible to `sacct`-less `scontrol show job` for a while.
KillWait=5
MinJobAge=300
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    need
    if pid_alive "$DIR/slurmctld.pid"; then
        echo "export SLURM_CONF=$CONF"
        return 0
    fi
    rm -rf "$DIR"
    mkdir -p "$DIR"/{munge,state,spool,log}
    chmod 700 "$DIR" "$DIR/munge"

    # munge: a fresh key and a private socket, so a system-wide munged (or its absence) does not matter.
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1 count=1024 status=none
    chmod 400 "$DIR/munge/munge.key"
    munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/munge/munged.seed"

    write_conf
    export SLURM_CONF="$CONF"
    slurmctld -f "$CONF" -i      # -i: ignore stale state (the state dir is fresh anyway)
    slurmd -f "$CONF"

    # The node registers within seconds; wait until it is idle.
    for _ in $(seq 1 60); do
        if sinfo -h -o '%t' 2>/dev/null | grep -qx 'idle'; then
            echo "export SLURM_CONF=$CONF"
            return 0
        fi
        sleep 0.5
    done
    echo "slurm_local: node not idle after 30 s; logs in $DIR/log" >&2
    sinfo >&2 || true
    tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    stop
    exit 1
}

stop() {
    # Stop only the daemons this script started (by their pid files), never by name.
    local f p
    for f in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"; do
        if pid_alive "$f"; then
            p="$(cat "$f")"
            kill "$p" 2>/dev/null || true
            for _ in $(seq 1 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
            kill -9 "$p" 2>/dev/null || true
        fi
    done
    rm -rf "$DIR"
}

status() {
    pid_alive "$DIR/slurmctld.pid" || { echo "slurm_local: not running"; exit 1; }
    SLURM_CONF="$CONF" sinfo
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) pid_alive "$DIR/slurmctld.pid" || die "not running"; echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 {start|stop|status|env}" >&2; exit 2 ;;
esac
