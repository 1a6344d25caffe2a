"""A run killed with SIGKILL loses nothing it finished and resumes to the same leaderboard as an
uninterrupted run; two runs on one output directory at once: the second is refused.

Real processes (``python -m tlbench run``), real signals. ``hold_plugin`` (loaded through
``$TLBENCH_PLUGINS``) holds the second cell of a run at its start while a file exists, so "one
cell recorded, another in flight" is a state the test waits for rather than a race.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import ROOT  # tests/ is on sys.path (pytest rootdir conftest)

from tlbench.cli import main

TESTS = Path(__file__).resolve().parent
SUITE = """\
name: resume
dataset: sklearn_digits
pairs: [digits->digits+invert]
backbones:
  - name: test_efficientnet
    weights: random
strategies: [source_only]
seeds: [0, 1]
recipe: {steps: 4, batch_size: 8, image_size: 16, resize_size: 18, hflip: false, eval_batch_size: 512,
         log_every: 2, timing_warmup_steps: 1, deterministic: true}
reports: [csv]
"""
CELLS = 2
TIMING_COLUMNS = ["train_img_per_s", "eval_img_per_s", "peak_mem_mb", "wall_s", "started_at"]


def _env(hold_dir: Path | None) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)]),
        "TLBENCH_PLUGINS": "hold_plugin",
        # the same thread count as the in-process baseline run, so the float sums match exactly
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
    }
    env.pop("TLBENCH_TEST_HOLD_DIR", None)
    if hold_dir is not None:
        env["TLBENCH_TEST_HOLD_DIR"] = str(hold_dir)
    return env


@pytest.fixture
def started():
    """The runs a test starts; any still alive when it ends (a failed assertion) are killed."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _start(suite: Path, out: Path, hold_dir: Path | None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tlbench", "run", str(suite), "--out", str(out), "--quiet", "--device", "cpu"],
        env=_env(hold_dir),
        cwd=suite.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _records(out: Path) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in (out / "cells").glob("*/record.json")}


def _wait_for_one_done_one_held(proc: subprocess.Popen, out: Path, hold: Path, timeout: float = 240) -> str:
    """Wait until a cell is recorded and another has started (and is held); return the held cell's id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        done = _records(out)
        held = [
            p.name.removesuffix(".started")
            for p in hold.glob("*.started")
            if p.name.removesuffix(".started") not in done
        ]
        if done and held:
            return held[0]
        time.sleep(0.05)
    raise AssertionError("the run never reached one recorded cell and one in flight")


def _comparable(out: Path) -> pd.DataFrame:
    df = pd.read_csv(out / "results.csv").drop(columns=TIMING_COLUMNS)
    return df.sort_values("cell_id").reset_index(drop=True)


@pytest.mark.slow
def test_sigkill_loses_nothing_and_resumes_to_the_same_leaderboard(tmp_path, capsys, started):
    suite = tmp_path / "resume.yaml"
    suite.write_text(SUITE)
    killed, baseline, hold = tmp_path / "killed", tmp_path / "baseline", tmp_path / "hold"
    hold.mkdir()
    (hold / "hold").write_text("")

    # -- 1. a run with one cell recorded and the next in flight ------------------------------------
    proc = _start(suite, killed, hold)
    started.append(proc)
    in_flight = _wait_for_one_done_one_held(proc, killed, hold)
    finished = _records(killed)
    assert len(finished) == 1 and in_flight not in finished

    # -- 2. a second run on the same directory meanwhile is refused, naming the holder; touches nothing
    code = main(["run", str(suite), "--out", str(killed), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [
        f"tlbench: error: {killed} is in use by tlbench pid {proc.pid} on {os.uname().nodename}; "
        "wait for it to finish or use another --out"
    ]
    assert _records(killed) == finished

    # -- 3. SIGKILL ------------------------------------------------------------------------------------
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert _records(killed) == finished
    # a kill in the middle of writing a record leaves at most a temporary file: plant one
    partial = killed / "cells" / in_flight / ".record.json.k1ll3d.tmp"
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text('{"suite": "resume", "status": "ok", "target_acc": 100.0, "cell_id": "' + in_flight)

    # -- 4. the same command again resumes it; meanwhile an uninterrupted run here, for comparison --
    resumed = _start(suite, killed, None)
    started.append(resumed)
    assert main(["run", str(suite), "--out", str(baseline), "--quiet", "--device", "cpu"]) == 0
    out_resumed, err_resumed = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err_resumed
    assert f"{CELLS} cells: {CELLS - 1} run, 1 already done, 0 failed" in out_resumed

    # finished cells were kept and skipped: byte-identical records
    after = _records(killed)
    for cell_id, data in finished.items():
        assert after[cell_id] == data
    # every record parses; the planted temporary file was not taken for a record
    assert len(after) == CELLS
    for data in after.values():
        assert json.loads(data)["status"] == "ok"
    df = pd.read_csv(killed / "results.csv")
    assert len(df) == CELLS and df["cell_id"].is_unique and set(df["cell_id"]) == set(after)
    assert len((killed / "results.jsonl").read_text().splitlines()) == CELLS
    assert 100.0 not in df["target_acc"].tolist()

    # the same numbers as the uninterrupted run (accuracies are deterministic on CPU)
    pd.testing.assert_frame_equal(_comparable(killed), _comparable(baseline))
    pd.testing.assert_frame_equal(pd.read_csv(killed / "leaderboard.csv"), pd.read_csv(baseline / "leaderboard.csv"))


# -- SIGTERM: what kill, systemd, Slurm's time limit and CI runners send ----------------------------------
@pytest.mark.slow
def test_sigterm_interrupts_like_ctrl_c_and_the_next_run_trains_the_cell(tmp_path, started):
    suite = tmp_path / "resume.yaml"
    suite.write_text(SUITE)
    out, hold = tmp_path / "out", tmp_path / "hold"
    hold.mkdir()
    (hold / "hold").write_text("")
    proc = _start(suite, out, hold)
    started.append(proc)
    in_flight = _wait_for_one_done_one_held(proc, out, hold)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == (
        "tlbench: stopped by SIGTERM; finished cells are recorded, run the same command to resume"
    )
    assert "Traceback" not in err
    # interrupted, not died: no running mark left to be counted as a death (out of memory?) next time
    assert not list(out.glob("cells/*/running.json"))
    assert not (out / "cells" / in_flight / "record.json").exists()

    resumed = _start(suite, out, None)
    started.append(resumed)
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert f"{CELLS} cells: {CELLS - 1} run, 1 already done, 0 failed" in stdout
    assert "was running when an earlier run died" not in stderr
    assert json.loads((out / "cells" / in_flight / "record.json").read_text())["status"] == "ok"


def test_sigterm_handler_is_the_runs_only_and_restored_after(tmp_path, capsys, monkeypatch):
    import tlbench.matrix.runner as runner

    seen: list[object] = []

    def terminated_run(*args, **kwargs):
        seen.append(signal.getsignal(signal.SIGTERM))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(2)  # the handler raises before this ends

    monkeypatch.setattr(runner, "run_suite", terminated_run)
    suite = tmp_path / "resume.yaml"
    suite.write_text(SUITE)

    def before(signum, frame):  # the process's own handler: what SIGTERM reaches without the run's
        seen.append("the previous handler")

    saved = signal.signal(signal.SIGTERM, before)
    try:
        code = main(["run", str(suite), "--out", str(tmp_path / "out"), "--quiet"])
        assert signal.getsignal(signal.SIGTERM) is before
    finally:
        signal.signal(signal.SIGTERM, saved)
    captured = capsys.readouterr()
    assert code == 143
    assert captured.err.strip().splitlines() == [
        "tlbench: stopped by SIGTERM; finished cells are recorded, run the same command to resume"
    ]
    assert len(seen) == 1 and seen[0] is not before
