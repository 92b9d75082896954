#!/usr/bin/env bash
# Bring up a throw-away Slurm 22.05 cluster on this one machine, for tests and CI (docs/launch.md).
#
#   bash scripts/slurm-up.sh      # idempotent: restarts what runs, starts what does not
#   bash scripts/slurm-down.sh    # stops exactly the daemons started here (by their pid files)
#
# Two fake compute nodes, node1 and node2, each a slurmd in its own UTS namespace (hostname = node
# name) on its own loopback address, so a multi-node torchrun finds exactly one rendezvous host.
# slurmdbd + MariaDB make `sacct` work (TorchX reads job states from it). Debian's packages are
# installed when absent (needs root and apt). No systemd: every daemon is started here and
# daemonizes itself. Env: NODE_CPUS (default 2), NODE_MEM_MB (default 4000) per fake node.
# Exit status 0 = `sinfo` shows two idle nodes; otherwise a one-line reason on stderr.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
here=$(cd "$(dirname "$0")" && pwd)
t0=$(date +%s)
say() { echo "[slurm-up +$(( $(date +%s) - t0 ))s] $*"; }
fail() { echo "[slurm-up] $*" >&2; exit 1; }
wait_for() {  # wait_for SECONDS COMMAND...: poll every 0.1 s
  local tries=$(( $1 * 10 )); shift
  for _ in $(seq 1 "$tries"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  fail "timed out waiting for: $*"
}
running() {  # running PIDFILE: the pid in it is alive and not a zombie
  [ -f "$1" ] || return 1
  local pid; pid=$(cat "$1")
  kill -0 "$pid" 2>/dev/null && ! grep -q '^[^)]*) Z' "/proc/$pid/stat" 2>/dev/null
}

[ "$(id -u)" = 0 ] || fail "needs root (it installs packages and runs the daemons as root)"
bash "$here/slurm-down.sh" >/dev/null  # leftovers of an earlier run, by pid file

# 1. packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v slurmdbd >/dev/null \
   || ! command -v sbatch >/dev/null || ! command -v mariadbd >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || fail "Slurm is not installed and there is no apt-get to install it"
  apt-get update -qq || fail "apt-get update failed"
  apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client slurmdbd munge mariadb-server >/dev/null || fail "apt-get install failed"
fi
say "packages present"

# 2. fake nodes: own hostnames on own loopback addresses
grep -q '[[:space:]]node1$' /etc/hosts || echo '127.0.1.1 node1' >> /etc/hosts
grep -q '[[:space:]]node2$' /etc/hosts || echo '127.0.1.2 node2' >> /etc/hosts

# 3. munge (authentication of every Slurm message)
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 0755 /run/munge
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  wait_for 10 sh -c 'munge -n | unmunge'
fi
say "munged up"

# 4. MariaDB with a fresh accounting database (job ids restart at 1 with a fresh state dir)
install -d /var/log/slurm
install -d -o mysql -g mysql -m 0755 /run/mysqld
if ! mariadb-admin ping >/dev/null 2>&1; then
  setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --pid-file=/run/mysqld/mysqld.pid \
    --innodb-buffer-pool-size=64M </dev/null >/var/log/slurm/mariadb.log 2>&1 &
  wait_for 60 mariadb-admin ping
fi
mariadb -e "DROP DATABASE IF EXISTS slurm_acct_db;
  CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm-ci';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
say "mariadb up"

# 5. configuration
install -d /etc/slurm /var/spool/slurmd
rm -rf /var/spool/slurmctld && install -d /var/spool/slurmctld
cat > /etc/slurm/slurmdbd.conf <<'CONF'
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm-ci
StorageLoc=slurm_acct_db
CONF
chmod 600 /etc/slurm/slurmdbd.conf
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=ci
SlurmctldHost=localhost
SlurmctldPort=6817
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
# no cgroups and no systemd here
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# TorchX submits heterogeneous jobs; only the backfill scheduler starts them (every second here)
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
MpiDefault=none
ReturnToService=2
# the fake nodes share this machine's cores: trust the config, not the hardware probe
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobCompType=jobcomp/none
MailProg=/bin/true
InactiveLimit=0
KillWait=5
MinJobAge=300
NodeName=node1 NodeHostname=node1 NodeAddr=127.0.1.1 Port=6821 CPUs=${NODE_CPUS:-2} RealMemory=${NODE_MEM_MB:-4000} State=UNKNOWN
NodeName=node2 NodeHostname=node2 NodeAddr=127.0.1.2 Port=6822 CPUs=${NODE_CPUS:-2} RealMemory=${NODE_MEM_MB:-4000} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

# 6. daemons
running /run/slurmdbd.pid || slurmdbd
wait_for 30 bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819'
say "slurmdbd up"
running /run/slurmctld.pid || slurmctld
wait_for 30 sinfo --noheader
for node in node1 node2; do
  running "/run/slurmd-$node.pid" || unshare --uts sh -c "hostname $node && exec slurmd -N $node"
done
wait_for 60 bash -c '[ "$(sinfo --noheader --Node --states=idle --format=%N | wc -l)" = 2 ]'
wait_for 30 sacctmgr --noheader show cluster ci
say "cluster up: $(sinfo --noheader --Node --format='%N %t %c CPUs %m MB' | tr '\n' ';')"
