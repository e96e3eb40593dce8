#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for lic_kd's SLURM tests and for trying launcher=slurm.
#   scripts/slurm-local.sh up       install (Debian packages) and start munge, MariaDB, slurmdbd, slurmctld, slurmd
#   scripts/slurm-local.sh down     stop what `up` started (by pid), nothing else
#   scripts/slurm-local.sh status   sinfo
# Needs root (apt-get, daemons). State lives in $SLURM_LOCAL_DIR (default /tmp/lic_kd-slurm).
set -euo pipefail

STATE=${SLURM_LOCAL_DIR:-/tmp/lic_kd-slurm}
CONF_DIR=/etc/slurm
PIDS="$STATE/pids"
HOST=$(hostname -s)

log() { printf '[slurm-local] %s\n' "$*"; }

ours() {  # is this pid one of the daemons this script starts? (a stale pid may belong to anything now)
  case "$(cat "/proc/$1/comm" 2>/dev/null)" in munged|mariadbd|slurmdbd|slurmctld|slurmd) return 0 ;; *) return 1 ;; esac
}

forget_stale_pids() {  # keep only pids that still are our daemons (a new session or machine starts clean)
  [ -f "$PIDS" ] || return 0
  local pid live=""
  while read -r pid; do ours "$pid" && live="$live$pid"$'\n'; done <"$PIDS"
  printf '%s' "$live" >"$PIDS"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit=$1 what=$2; shift 2
  for _ in $(seq 1 $((limit * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  log "timed out waiting for $what"; return 1
}

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null && command -v munged >/dev/null; then
    return
  fi
  log "installing slurmctld slurmd slurm-client slurmdbd munge mariadb-server (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client slurmdbd munge mariadb-server mariadb-client >/dev/null
}

write_configs() {
  local cpus mem_mb
  cpus=$(nproc)
  mem_mb=$(( $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) - 1024 ))  # more than slurmd sees drains the node
  mkdir -p "$CONF_DIR" "$STATE"/{spool/ctld,spool/d,log,run}
  cat >"$CONF_DIR/slurm.conf" <<EOF
ClusterName=lic_kd
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
# Fast turnaround for tests: a job past its limit is killed promptly; a requeued job (Slurm holds it 121 s)
# starts as soon as it is eligible, not at the next 60-second scheduling pass.
KillWait=5
MinJobAge=30
SchedulerParameters=bf_interval=5,sched_interval=5
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$CONF_DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$CONF_DIR/slurmdbd.conf"
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge && chown munge:munge /run/munge
  if ! munge -n >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --force --pid-file=/run/munge/munged.pid  # --force: a stale socket is fine
    wait_for 10 munged munge -n
    cat /run/munge/munged.pid >>"$PIDS"
  fi
}

start_mariadb() {
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  if ! mariadb -u root -e 'select 1' >/dev/null 2>&1; then
    if [ ! -d "$STATE/mysql/mysql" ]; then
      mkdir -p "$STATE/mysql" && chown mysql:mysql "$STATE/mysql"
      mariadb-install-db --user=mysql --datadir="$STATE/mysql" --auth-root-authentication-method=normal >/dev/null
    fi
    # files written by mariadbd itself go where user mysql may write
    mariadbd --user=mysql --datadir="$STATE/mysql" --skip-networking --socket=/run/mysqld/mysqld.sock \
      --pid-file=/run/mysqld/mariadbd.pid --log-error="$STATE/mysql/mariadb.log" &
    wait_for 60 mariadbd mariadb -u root -e 'select 1'
    cat /run/mysqld/mariadbd.pid >>"$PIDS"
  fi
}

start_slurm() {
  if ! pgrep -x slurmdbd >/dev/null; then
    slurmdbd
    wait_for 30 slurmdbd sacctmgr -n list cluster
    cat "$STATE/run/slurmdbd.pid" >>"$PIDS"
  fi
  sacctmgr -i add cluster lic_kd >/dev/null 2>&1 || true
  if ! pgrep -x slurmctld >/dev/null; then
    slurmctld
    wait_for 30 slurmctld scontrol ping
    cat "$STATE/run/slurmctld.pid" >>"$PIDS"
  fi
  if ! pgrep -x slurmd >/dev/null; then
    slurmd
    wait_for 10 slurmd test -s "$STATE/run/slurmd.pid"
    cat "$STATE/run/slurmd.pid" >>"$PIDS"
  fi
  scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
  wait_for 60 "an idle node" sh -c "sinfo -h -N -o %t | grep -q idle"
}

up() {
  [ "$(id -u)" = 0 ] || { log "needs root (apt-get and the daemons)"; exit 1; }
  install_packages
  getent hosts "$HOST" >/dev/null || echo "127.0.0.1 $HOST" >>/etc/hosts  # the node name must resolve
  write_configs
  touch "$PIDS"
  forget_stale_pids
  start_munge
  start_mariadb
  start_slurm
  log "up: $(sinfo -h -o '%P %a %D %t' | tr '\n' ' ')"
}

down() {
  [ -f "$PIDS" ] || { log "nothing started by this script"; return 0; }
  tac "$PIDS" | while read -r pid; do
    ours "$pid" || continue
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  done
  rm -f "$PIDS"
  log "down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) sinfo ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
