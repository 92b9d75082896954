#!/usr/bin/env bash
# Stop the daemons scripts/slurm-up.sh started, each by the pid in its pid file, and only when that
# pid still runs the expected program. Never by name (no pkill/killall). Idempotent.
set -u
stop() {  # stop PIDFILE COMM
  [ -f "$1" ] || return 0
  local pid; pid=$(cat "$1")
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 100); do  # gone, or a zombie waiting for its parent to reap it: stopped
      if [ ! -d "/proc/$pid" ] || grep -q '^[^)]*) Z' "/proc/$pid/stat" 2>/dev/null; then break; fi
      sleep 0.1
    done
  fi
  rm -f "$1"
}
for node in node1 node2; do stop "/run/slurmd-$node.pid" slurmd; done
stop /run/slurmctld.pid slurmctld
stop /run/slurmdbd.pid slurmdbd
stop /run/mysqld/mysqld.pid mariadbd
stop /run/munge/munged.pid munged
echo "[slurm-down] stopped"
