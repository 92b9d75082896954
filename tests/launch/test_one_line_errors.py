"""One line per error: what the console shows when a job or a command fails, case by case.

Each case runs the real ``recscale`` command and asserts the console: no traceback, no torchrun
report, one ``recscale CMD: error:`` line (the last) naming the file, row or column and what was
expected, ending with the log that holds the traceback.
"""

from __future__ import annotations

import gzip
import io
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recscale.launch import cli
from recscale.launch.console import ConsoleFilter
from recscale.launch.failures import TRACEBACK_BEGIN, TRACEBACK_END, failure_line, one_line
from recscale.trainer.run_dir import write_json
from tests.data.test_bad_input import criteo_lines
from tests.launch.helpers import recscale
from tests.trainer.runs import SMALL

NOT_ON_THE_CONSOLE = ("Traceback", "[rank", "ChildFailedError", "[TBE=", "FutureWarning", "elastic")


def console(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The non-empty lines a user saw (stdout, then stderr)."""
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]


def assert_one_error_line(proc: subprocess.CompletedProcess[str], command: str, *fragments: str) -> str:
    """The console holds one error line (its last), with ``fragments``; returns it."""
    lines = console(proc)
    assert proc.returncode != 0
    errors = [line for line in lines if "error" in line.lower()]
    assert len(errors) == 1, "\n".join(lines)
    assert lines[-1] == errors[0], "\n".join(lines)
    assert errors[0].startswith(f"recscale {command}: error: "), errors[0]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    for noise in NOT_ON_THE_CONSOLE:
        assert not any(noise in line for line in lines), f"{noise!r} on the console:\n" + "\n".join(lines)
    return errors[0]


def traceback_log(line: str) -> str:
    """The text of the log the error line ends with."""
    found = re.search(r"\(traceback: (\S+)\)$", line)
    assert found, line
    return Path(found.group(1)).read_text()


# ---------------------------------------------------------------------------------------- pieces


def test_console_filter_shows_rank0_lines_and_keeps_tracebacks_and_torchrun_off_the_console():
    side = io.StringIO()
    keep = ConsoleFilter(verbose=False, side_log=side)
    shown = [
        keep(line)
        for line in [
            "[rank0]:run directory: /r\n",
            "W1206 12:00:00.000 123 torch/distributed/elastic/api.py:1] Sending process 7 closing signal SIGTERM\n",
            f"[rank0]:{TRACEBACK_BEGIN}\n",
            "[rank0]:Traceback (most recent call last):\n",
            "[rank1]:still rank 1's own line\n",
            "[rank0]:ValueError: bad\n",
            f"[rank0]:{TRACEBACK_END}\n",
            "[rank0]:rank 0 failed: bad (traceback: /r/stderr.log)\n",
            "[rank0]:step 4 loss 0.5\n",
            "[rank1]:[W1206 21:26:52.450024954 TCPStore.cpp:125] [c10d] recvValue failed on SocketImpl(fd=3)\n",
            "[rank1]:Exception raised from recvBytes at Utils.hpp:787 (most recent call first):\n",
            "[rank1]:frame #0: c10::Error::Error(c10::SourceLocation) + 0x9d (0x7f in libc10.so)\n",
            "[node0.local1]:[rank1] rank 1 failed: bad (traceback: /r/1/stderr.log)\n",
            "[node0.local1]:[rank1]:[W1206 21:28:15.392310553 TCPStore.cpp:125] [c10d] recvValue failed\n",
            "[node0.local1]:<omitting python frames>\n",
            "[node0.local0]:eval @ step 8: auc 0.7\n",
        ]
    ]
    expected = ["run directory: /r\n", "still rank 1's own line\n", "step 4 loss 0.5\n", "eval @ step 8: auc 0.7\n"]
    assert [s for s in shown if s is not None] == expected
    assert side.getvalue().startswith("W1206") and "SIGTERM" in side.getvalue()
    verbose = ConsoleFilter(verbose=True, side_log=None)
    assert verbose("[rank0]:Traceback (most recent call last):\n") == "[rank0]:Traceback (most recent call last):\n"


def test_step_lines_move_one_progress_bar_and_other_lines_print_above_it(capsys):
    keep = ConsoleFilter(verbose=False, side_log=None, bar=True)
    assert keep("[rank0]:step 4/32 | loss 0.6825 | 7,935 ex/s | MFU 2.29%\n") is None
    assert keep.bar is not None and keep.bar.active
    shown = keep("[rank0]:eval @ step 4: auc 0.6478\n")
    keep.show(shown, sys.stderr)
    assert keep("[rank0]:step 32/32 | loss 0.2842 | 17,164 ex/s | MFU 4.95%\n") is None
    keep.close()
    err = capsys.readouterr().err
    assert "eval @ step 4: auc 0.6478\n" in err  # above the bar, once
    assert "step 32/32" in err and "loss 0.2842 | 17,164 ex/s | MFU 4.95%" in err and "100%" in err
    assert "step 4/32 |" not in err  # the step lines themselves are not printed


def test_eval_batches_become_progress_lines_the_bar_reads(caplog, capsys):
    from types import SimpleNamespace

    import torch

    from recscale.launch.eval_entrypoint import progress_lines

    batches = [SimpleNamespace(labels=torch.zeros(8, 1)) for _ in range(3)]
    with caplog.at_level("INFO", logger="recscale"):
        assert list(progress_lines(batches, 3, every_s=0.0)) == batches
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" |")[0] for line in lines] == ["batch 1/3", "batch 2/3", "batch 3/3"]
    keep = ConsoleFilter(verbose=False, side_log=None, bar=True)
    assert all(keep(f"[rank0]:{line}\n") is None for line in lines)
    keep.close()
    assert "batch 3/3" in capsys.readouterr().err


def test_the_job_line_is_the_earliest_failure_since_the_launch(tmp_path):
    failures = tmp_path / "failures"
    failures.mkdir()
    write_json(failures / "rank0.json", {"time": 105.0, "rank": 0, "reason": "connection closed", "log": "/l/0"})
    write_json(failures / "rank1.json", {"time": 104.0, "rank": 1, "reason": "label 2.0 is not 0 or 1", "log": "/l/1"})
    write_json(failures / "rank2.json", {"time": 50.0, "rank": 2, "reason": "an earlier launch", "log": "/l/2"})
    line = failure_line("train", tmp_path, 1, since=100.0)
    assert line == "recscale train: error: rank 1 failed: label 2.0 is not 0 or 1 (traceback: /l/1)"
    assert "no rank recorded why" in failure_line("train", tmp_path, 1, since=200.0)
    assert one_line(ValueError("first\n  second\n  third")) == "first (and 2 more lines in the log)"
    assert one_line(RuntimeError("boom")) == "RuntimeError: boom"


def test_an_unexpected_exception_is_one_line_and_a_saved_traceback(tmp_path, monkeypatch, capsys):
    def explode(args):
        raise ZeroDivisionError("division by zero in the planner")

    monkeypatch.setenv("RECSCALE_ERROR_DIR", str(tmp_path))
    monkeypatch.setattr("recscale.launch.commands.models", explode)
    assert cli.main(["models"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("recscale models: error: ZeroDivisionError: division by zero")
    assert "Traceback" in traceback_log(err[0]) and "explode" in traceback_log(err[0])


# ---------------------------------------------------------------------------------- data commands


def test_a_truncated_gz_criteo_file_is_named(tmp_path):
    whole = gzip.compress(("\n".join(criteo_lines(100) * 8) + "\n").encode())
    truncated = tmp_path / "day_0.gz"
    truncated.write_bytes(whole[: len(whole) // 3])
    proc = recscale("data", "convert", "criteo", str(truncated), "--out", str(tmp_path / "out"), "--no-progress")
    assert_one_error_line(proc, "data", str(truncated), "gzip stream is truncated or damaged")
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_convert_into_an_existing_out_is_refused(tmp_path):
    source = tmp_path / "day_0.tsv"
    source.write_text("\n".join(criteo_lines(20)) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    proc = recscale("data", "convert", "criteo", str(source), "--out", str(out), "--no-progress")
    assert_one_error_line(proc, "data", str(out), "already exists and is not empty")
    assert (out / "mine.txt").read_text() == "keep me"


def test_eval_of_a_missing_checkpoint_is_one_line(tmp_path):
    proc = recscale("eval", str(tmp_path / "runs" / "nothing"))
    assert_one_error_line(proc, "eval", str(tmp_path / "runs" / "nothing"), "no such checkpoint or run directory")


# ------------------------------------------------------------------------------ bad training data


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """The small job's synthetic data as Parquet (train/, valid/)."""
    root = tmp_path_factory.mktemp("data")
    sets = [x for s in SMALL if s.startswith("data.") for x in ("--set", s)]
    assert cli.main(["data", "synth", "quickstart", *sets, "--out", str(root / "good")]) == 0
    return root / "good"


def with_bad_value(good: Path, out: Path, column: str, row: int, value: float) -> Path:
    """A copy of ``good`` whose training data has ``value`` in ``column`` at ``row``."""
    table = pq.read_table(good / "train")
    values = table.column(column).to_numpy().astype(np.float32)
    values[row] = value
    (out / "train").mkdir(parents=True)
    i = table.schema.get_field_index(column)
    pq.write_table(table.set_column(i, column, pa.array(values)), out / "train" / "part-00000.parquet")
    return out


@pytest.mark.integration
@pytest.mark.parametrize(
    ("column", "value", "nproc", "expected"),
    [
        ("label", 2.0, 2, "column 'label': label 2.0 is not 0 or 1"),
        ("label", 0.5, 1, "column 'label': label 0.5 is not 0 or 1"),
        ("dense_1", math.nan, 1, "column 'dense_1': dense value nan is not finite"),
    ],
    ids=["label-2-two-ranks", "label-half", "nan-dense"],
)
def test_a_bad_training_value_ends_the_job_with_one_line(tmp_path, small_data, column, value, nproc, expected):
    bad = with_bad_value(small_data, tmp_path / "bad", column, 1000, value)
    sets = [
        *SMALL,
        "data.source=parquet",
        f"data.train_path={bad / 'train'}",
        f"data.valid_path={small_data / 'valid'}",
    ]
    args = [x for s in sets for x in ("--set", s)]
    proc = recscale("train", "quickstart", "--nproc", str(nproc), *args, "--run-dir", str(tmp_path / "run"))
    line = assert_one_error_line(proc, "train", str(bad / "train" / "part-00000.parquet"), "row 1000", expected)
    assert re.search(r"rank \d failed: ", line)
    log = traceback_log(line)
    assert "Traceback (most recent call last)" in log and expected in log
    assert len(console(proc)) <= 20  # data and run directory lines, the plan table, the error


@pytest.mark.integration
def test_a_launched_job_that_fails_ends_with_one_error_line(tmp_path, small_data):
    bad = with_bad_value(small_data, tmp_path / "bad", "label", 1000, 2.0)
    sets = [
        *SMALL,
        "data.source=parquet",
        f"data.train_path={bad / 'train'}",
        f"data.valid_path={small_data / 'valid'}",
        f"launch.run_root={tmp_path / 'runs'}",
    ]
    args = [x for s in sets for x in ("--set", s)]
    proc = recscale("launch", "quickstart", "-s", "local_cwd", "-j", "1x2", *args)
    handle = proc.stdout.splitlines()[0]
    assert f"{handle}: FAILED" in proc.stderr  # the job's state, then its one error line
    line = assert_one_error_line(proc, "launch", "row 1000", "column 'label': label 2.0 is not 0 or 1")
    assert "Traceback (most recent call last)" in traceback_log(line)
