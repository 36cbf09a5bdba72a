#!/usr/bin/env bash
# Bring up a single-node SLURM cluster on this machine (Debian, run as root).
#
# Idempotent: re-running it re-installs nothing, rewrites the config, and
# (re)starts only the daemons that are not running.  The node "localhost"
# offers every CPU, most of the RAM and one *fake* GPU (gres gpu:1 backed by
# /dev/null) so that rules requesting `gpu=1` can be scheduled on a machine
# without one.  No slurmdbd: sacct does not work, the Snakemake profile uses
# squeue for job status instead.
#
# Stop it again with .ci/slurm-down.sh.
set -euo pipefail

log() { printf '[slurm-up] %s\n' "$*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    log "must run as root (installs packages, writes /etc/slurm)"
    exit 1
fi

# --- 1. packages -------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    log "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update
    timeout 900 apt-get install -y --no-install-recommends slurm-wlm munge
fi

# --- 2. configuration --------------------------------------------------------
CPUS=$(nproc)
MEM_TOTAL_MB=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
# leave ~10% (at least 512 MB) to the OS so slurmd never reports less memory
# than configured (which would drain the node)
RESERVE_MB=$(( MEM_TOTAL_MB / 10 > 512 ? MEM_TOTAL_MB / 10 : 512 ))
REAL_MEM_MB=$(( MEM_TOTAL_MB - RESERVE_MB ))

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
chmod 755 /var/spool/slurmctld /var/spool/slurmd /var/log/slurm

# Must live at /etc/slurm/slurm.conf: the snakemake slurm-jobstep plugin (and
# srun inside a job) do not see a SLURM_CONF exported here.
cat > /etc/slurm/slurm.conf.new <<EOF
# Written by .ci/slurm-up.sh -- single-node test cluster for msif.
ClusterName=msif
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
# keep finished jobs visible to squeue for a while (the status check of the
# snakemake plugin polls squeue; default MinJobAge=300 is fine, stated here)
MinJobAge=300
InactiveLimit=0
KillWait=30
Waittime=0
SlurmctldTimeout=120
SlurmdTimeout=300
NodeName=localhost NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${REAL_MEM_MB} Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
mv /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf

cat > /etc/slurm/gres.conf <<EOF
# Written by .ci/slurm-up.sh -- one fake GPU so gpu-requesting jobs schedule.
AutoDetect=off
NodeName=localhost Name=gpu File=/dev/null
EOF

# --- 3. munge ----------------------------------------------------------------
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating munge key"
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
fi
if id munge >/dev/null 2>&1; then
    chown munge:munge /etc/munge /etc/munge/munge.key /var/lib/munge /var/log/munge /run/munge
fi
chmod 700 /etc/munge /var/lib/munge /var/log/munge
chmod 755 /run/munge
chmod 400 /etc/munge/munge.key

if ! pgrep -x munged >/dev/null; then
    log "starting munged"
    if id munge >/dev/null 2>&1; then
        runuser -u munge -- munged
    else
        munged --force
    fi
fi
for _ in $(seq 1 20); do
    if munge -n </dev/null | unmunge >/dev/null 2>&1; then break; fi
    sleep 0.5
done
munge -n </dev/null | unmunge >/dev/null

# --- 4. slurm daemons --------------------------------------------------------
if ! pgrep -x slurmctld >/dev/null; then
    log "starting slurmctld"
    slurmctld
else
    timeout 30 scontrol reconfigure || true
fi
if ! pgrep -x slurmd >/dev/null; then
    log "starting slurmd"
    slurmd
fi

# --- 5. wait for the node ----------------------------------------------------
state=""
for i in $(seq 1 60); do
    state=$(timeout 10 sinfo -h -N -n localhost -o '%T' 2>/dev/null | head -n1 || true)
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        drain*|down*|fail*|"unknown"*)
            # a stale state from a previous run: ReturnToService=2 normally
            # handles this, but be explicit
            if (( i % 5 == 2 )); then
                timeout 10 scontrol update nodename=localhost state=resume 2>/dev/null || true
            fi
            ;;
    esac
    sleep 0.5
done
case "$state" in
    idle|mixed|allocated|completing) ;;
    *)
        log "node did not become idle (state: '${state:-none}')"
        timeout 10 sinfo -N -l || true
        tail -n 30 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
        exit 1
        ;;
esac

timeout 10 sinfo
