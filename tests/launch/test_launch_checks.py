"""``recscale launch`` before submission: bad input fails with one line, dry runs, no shell injection.

Runs the CLI in this process (no job starts). Slurm is faked by scripts on PATH that print what
``sinfo`` prints and record any ``sbatch`` / ``srun`` call, so these tests need no cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recscale.launch import cli, schedulers
from recscale.launch.schedulers import SlurmNode, check_slurm_capacity, parse_job_spec

ROOT = Path(__file__).resolve().parents[2]

SINFO = """#!/bin/sh
case "$*" in
  *--version*) echo "slurm 22.05.8" ;;
  *--Node*) printf 'node1|debug*|2|4000|(null)|idle\\nnode2|debug*|2|4000|(null)|idle\\n' ;;
  *) printf 'PARTITION,MEMORY\\ndebug*,4000\\n' ;;
esac
"""
SINFO_DOWN = """#!/bin/sh
echo "slurm_load_partitions: Unable to contact slurm controller (connect failure)" >&2
exit 1
"""
RECORD = """#!{python}
import json, os, sys
with open(os.environ["FAKE_SLURM_LOG"], "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
"""


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Launches from the repository root, state and run root under tmp_path."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("RECSCALE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("FAKE_SLURM_LOG", str(tmp_path / "slurm-calls.jsonl"))
    return tmp_path


def fake_slurm(tmp_path: Path, sinfo: str | None = SINFO) -> Path:
    """A bin directory with a fake ``sinfo`` and recording ``sbatch``/``srun``/``scontrol``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scripts = {"sbatch": RECORD.format(python=sys.executable), "srun": RECORD.format(python=sys.executable)}
    scripts["scontrol"] = RECORD.format(python=sys.executable)
    if sinfo is not None:
        scripts["sinfo"] = sinfo
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def launch(tmp_path: Path, capsys, *args: str) -> tuple[int, str, str]:
    sets = ["--set", f"launch.run_root={tmp_path / 'runs'}", "--set", f"data.cache_dir={tmp_path / 'cache'}"]
    code = cli.main(["launch", *args, *sets])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(tmp_path: Path, code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("recscale launch: error: "), lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing created
    assert not (tmp_path / "state" / schedulers.HANDLES).exists()  # nothing submitted
    assert not (tmp_path / "slurm-calls.jsonl").exists()  # no sbatch


def test_job_spec_parsing():
    assert parse_job_spec("2x4") == (2, 4)
    for bad in ("2", "2x", "x4", "0x1", "1x0", "2X4", "-1x2", "2x4x1"):
        with pytest.raises(ValueError, match="NODESxPROCS"):
            parse_job_spec(bad)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--scheduler", "kubernetes"], ["--scheduler kubernetes", "unknown scheduler", "local_cwd, slurm"]),
        (["-j", "2by1"], ["-j 2by1", "NODESxPROCS"]),
        (["-j", "0x1"], ["-j 0x1"]),
        (["-j", "1x64"], ["-j 1x64", "64 ranks", "CPUs"]),
        (["--max-restarts", "-1"], ["--max-restarts -1"]),
        (["--set", "name=x;touch"], ["name:", "cannot name a job"]),
        (
            ["--set", "data.source=parquet", "--set", "data.train_path=/nonexistent/train"]
            + ["--set", "data.valid_path=/nonexistent/valid"],
            ["data.train_path: /nonexistent/train does not exist"],
        ),
    ],
)
def test_bad_input_fails_with_one_line_before_anything_is_created(env, capsys, args, needles):
    code, _, err = launch(env, capsys, "quickstart", *args)
    assert_one_line_error(env, code, err, *needles)


def test_unwritable_run_root_fails_with_one_line(env, capsys):
    blocker = env / "a-file"
    blocker.write_text("")
    code = cli.main(["launch", "quickstart", "--set", f"launch.run_root={blocker / 'runs'}"])
    assert_one_line_error(env, code, capsys.readouterr().err, "launch.run_root", "not writable")


@pytest.mark.parametrize(
    ("sinfo", "args", "needles"),
    [
        (SINFO_DOWN, [], ["Slurm controller is not reachable", "Unable to contact slurm controller"]),
        (None, [], ["`sinfo` not found"]),
        (SINFO, ["-j", "4x1"], ["4 nodes", "partition 'debug' has 2"]),
        (SINFO, ["--set", "launch.gpus_per_node=1"], ["1 GPUs", "partition 'debug' has 0"]),
        (SINFO, ["--set", "launch.slurm.partition=gpu"], ["no partition 'gpu'", "debug"]),
        (SINFO, ["--set", "launch.slurm.partition=debug --wrap=touch"], ["launch.slurm.partition"]),
    ],
)
def test_slurm_problems_fail_before_submission(env, capsys, monkeypatch, sinfo, args, needles):
    monkeypatch.setenv("PATH", str(fake_slurm(env, sinfo)))
    code, _, err = launch(env, capsys, "quickstart", "--scheduler", "slurm", "-j", "2x1", *args)
    assert_one_line_error(env, code, err, *needles)


def test_capacity_check_skips_nodes_that_are_down():
    nodes = [SlurmNode(f"n{i}", "gpu", True, 32, 256000, 8, "idle" if i else "down") for i in range(3)]
    assert check_slurm_capacity(nodes, "", 2, 32, 8, 200000) == "gpu"
    with pytest.raises(ValueError, match="has 2 such nodes"):
        check_slurm_capacity(nodes, "gpu", 3, 32, 8, 0)


def test_local_dry_run_prints_each_node_command_and_creates_nothing(env, capsys):
    code, out, err = launch(env, capsys, "quickstart", "-j", "2x1", "--dry-run")
    assert code == 0, err
    commands = [line for line in out.splitlines() if line.startswith("env ")]
    assert len(commands) == 2
    for k, line in enumerate(commands):
        assert "-m recscale.launch.node --nnodes 2 --nproc-per-node 1" in line
        assert "--rdzv-host-env TORCHX_RANK0_HOST" in line and f"/logs/node{k} --node {k}" in line
    assert not (env / "runs").exists()


def test_slurm_dry_run_prints_the_sbatch_script_with_config_and_torchxconfig_options(env, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(fake_slurm(env)))
    code, out, err = launch(
        env, capsys, "quickstart", "-s", "slurm", "-j", "2x1", "--dry-run", "--set", "launch.mem_mb_per_node=2000"
    )
    assert code == 0, err
    assert "#SBATCH hetjob" in out
    for k in (0, 1):
        directive = next(line for line in out.splitlines() if f"--job-name=quickstart-{k}" in line)
        # the partition comes from sinfo's default, the time limit from the checked-in .torchxconfig
        for option in ("--partition=debug", "--time=2:00:00", "--cpus-per-task=1", "--mem=2000"):
            assert option in directive, directive
    assert "--rdzv-host-env SLURM_JOB_NODELIST_HET_GROUP_0" in out
    assert "# submitted as: sbatch --parsable --chdir=" in out and "/logs/slurm" in out
    assert not (env / "runs").exists() and not (env / "slurm-calls.jsonl").exists()


def test_a_slurm_dry_run_works_on_a_machine_without_slurm(env, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(fake_slurm(env, sinfo=None)))  # no sinfo: no cluster to ask
    code, out, err = launch(env, capsys, "quickstart", "-s", "slurm", "-j", "2x1", "--dry-run")
    assert code == 0, err
    assert "#SBATCH hetjob" in out and "# submitted as: sbatch" in out
    assert "dry run without a reachable cluster: the job was not checked against it" in err
    # a real submission still needs the cluster: one line, nothing created
    code, _, err = launch(env, capsys, "quickstart", "-s", "slurm", "-j", "2x1")
    assert_one_line_error(env, code, err, "sinfo")
    assert not (env / "runs").exists()


def test_config_values_cannot_inject_shell_commands(env, capsys, monkeypatch):
    """A run root full of shell syntax reaches the ranks as one literal argument; nothing runs."""
    monkeypatch.setenv("PATH", f"{fake_slurm(env)}{os.pathsep}{os.environ['PATH']}")
    hostile = env / "runs $(touch PWNED1); `touch PWNED2` & touch PWNED3"
    code = cli.main(
        ["launch", "quickstart", "-s", "slurm", "-j", "2x1", "--dry-run"] + ["--set", f"launch.run_root={hostile}"]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    script = out.split("# SBATCH_SCRIPT\n#----------------\n", 1)[1].split("\n# submitted as:", 1)[0]
    (env / "job.sh").write_text(script)
    work = env / "work"
    work.mkdir()
    subprocess.run(["bash", str(env / "job.sh")], cwd=work, env={**os.environ, "SLURM_JOB_ID": "7"}, check=True)
    calls = [json.loads(line) for line in (env / "slurm-calls.jsonl").read_text().splitlines()]
    srun = next(call for call in calls if call[0] == "srun")
    groups = [i for i, arg in enumerate(srun) if arg == "--run-dir"]
    assert len(groups) == 2  # one per node, each the literal path
    for i in groups:
        assert srun[i + 1].startswith(str(hostile)), srun[i + 1]
    assert "--rdzv-id" in srun and srun[srun.index("--rdzv-id") + 1] == "7"
    assert not list(env.rglob("PWNED*")) and not list(work.rglob("PWNED*")) and not list(ROOT.glob("PWNED*"))
