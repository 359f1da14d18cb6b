import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from chimuf.core.console import Console
from chimuf.core.engine import Run, changed_inputs, open_attempt
from chimuf.core.errors import Interrupted, StageError
from chimuf.core.files import atomic_write_json, read_json


@dataclass
class Count:
    value: int


def quiet_console() -> tuple[Console, io.StringIO]:
    stream = io.StringIO()
    return Console(stream=stream, live=False), stream


def make_run(tmp_path: Path) -> tuple[Run, io.StringIO]:
    console, stream = quiet_console()
    return Run(tmp_path / "run", console), stream


def test_stage_is_skipped_when_inputs_are_unchanged(tmp_path):
    calls = []
    run, _ = make_run(tmp_path)

    def work(ctx):
        calls.append(1)
        return Count(len(calls))

    assert run.stage("count", {"a": 1}, Count, work) == Count(1)
    again, stream = make_run(tmp_path)
    assert again.stage("count", {"a": 1}, Count, work) == Count(1)
    assert calls == [1]
    assert "reused" in stream.getvalue()


def test_changed_input_is_named_and_the_stage_redone(tmp_path):
    run, _ = make_run(tmp_path)
    run.stage("count", {"train": {"epochs": 50}}, Count, lambda ctx: Count(1))
    again, stream = make_run(tmp_path)
    assert again.stage("count", {"train": {"epochs": 2}}, Count, lambda ctx: Count(2)) == Count(2)
    assert "train.epochs: 50 → 2" in stream.getvalue()


def test_partial_work_is_kept_for_same_inputs_and_discarded_for_others(tmp_path):
    run, _ = make_run(tmp_path)

    def crash(ctx):
        (ctx.dir / "checkpoint").write_text("epoch 3")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run.stage("train", {"a": 1}, Count, crash)
    seen = []

    def look(ctx):
        seen.append((ctx.dir / "checkpoint").exists())
        return Count(0)

    run.stage("train", {"a": 1}, Count, look)
    assert seen == [True]
    run.stage("train", {"a": 2}, Count, look)
    assert seen == [True, False]


def test_units_are_done_once_per_stage(tmp_path):
    run, _ = make_run(tmp_path)
    calls = []

    def work(ctx):
        a = ctx.unit("one", Count, lambda: calls.append("one") or Count(1))
        if len(calls) == 1:
            raise RuntimeError("killed after unit one")
        return a

    with pytest.raises(RuntimeError):
        run.stage("s", {}, Count, work)
    calls.append("restart")
    run.stage("s", {}, Count, work)
    assert calls == ["one", "restart"]


def test_status_is_honest(tmp_path):
    run, _ = make_run(tmp_path)
    with run.activate({}):
        assert read_json(run.root / "run.json")["status"] == "running"
    assert read_json(run.root / "run.json")["status"] == "running"  # not finished unless told
    with pytest.raises(Interrupted), run.activate({}):
        raise Interrupted("SIGTERM")
    assert read_json(run.root / "run.json")["status"] == "interrupted"
    with pytest.raises(StageError), run.activate({}):
        raise StageError("disk full")
    state = read_json(run.root / "run.json")
    assert state["status"] == "failed" and state["error"] == "disk full"
    with run.activate({}):
        run.finish()
    assert read_json(run.root / "run.json")["status"] == "finished"


HOLD_RUN = """
import sys
from pathlib import Path
from chimuf.core.console import Console
from chimuf.core.engine import Run
with Run(Path(sys.argv[1]), Console(live=False, quiet=True)).activate({}):
    print("holding", flush=True)
    sys.stdin.read()
"""


def test_run_folder_in_use_by_a_live_process_is_refused(tmp_path):
    # The folder is in use when another process holds its lock (a run.json naming a live pid is
    # no longer enough: pids are reused), so the other process here is real and holds it.
    root = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_RUN, str(root)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    try:
        assert holder.stdout.readline().strip() == "holding"
        again = Run(root, quiet_console()[0])
        expected = f"in use by process {holder.pid} on host {socket.gethostname()}"
        with pytest.raises(StageError, match=re.escape(expected)), again.activate({}):
            pass
    finally:
        holder.communicate("", timeout=30)
    with again.activate({}):  # the holder has ended: the kernel released its lock
        pass


def test_a_dead_run_whose_pid_was_reused_does_not_lock_its_folder_out(tmp_path):
    run, _ = make_run(tmp_path)
    run.root.mkdir(parents=True)
    atomic_write_json(run.root / "run.json", {"status": "running", "pid": 1})  # pid 1 is alive
    console, stream = quiet_console()
    with Run(run.root, console).activate({}):
        assert read_json(run.root / "run.json")["pid"] == os.getpid()
    assert "was killed" in stream.getvalue()


def test_a_stopped_run_is_recorded_as_stopped_and_resumes_without_a_kill_warning(tmp_path):
    run, _ = make_run(tmp_path)
    with run.activate({}):
        run.stop("split")
    state = read_json(run.root / "run.json")
    assert (state["status"], state["stopped_after"]) == ("stopped", "split")
    console, stream = quiet_console()
    with Run(run.root, console).activate({}):
        assert "stopped_after" not in read_json(run.root / "run.json")
    assert "was killed" not in stream.getvalue()
    assert "stopped after `split` as asked; resuming" in stream.getvalue()


def test_atomic_write_leaves_no_temp_files_and_damaged_json_is_an_error(tmp_path):
    path = tmp_path / "x" / "a.json"
    atomic_write_json(path, {"v": float("nan"), "t": (1, 2)})
    assert json.loads(path.read_text()) == {"v": None, "t": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]
    path.write_text('{"v": ')
    with pytest.raises(StageError, match="damaged"):
        read_json(path)


def test_unwritable_run_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    run = Run(blocker / "run", quiet_console()[0])
    with pytest.raises(StageError, match="not writable"), run.activate({}):
        pass


def test_changed_inputs_lists_leaves():
    assert changed_inputs({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 4}) == [
        "a.c: 2 → 3",
        "d: null → 4",
    ]


def test_disk_full_during_a_stage_marks_the_run_failed(tmp_path):
    import errno

    run, _ = make_run(tmp_path)

    def fill_disk(ctx):
        raise OSError(errno.ENOSPC, "No space left on device", str(ctx.dir / "model.keras"))

    with pytest.raises(OSError), run.activate({}):
        run.stage("train", {}, Count, fill_disk)
    state = read_json(run.root / "run.json")
    assert state["status"] == "failed"
    assert "No space left on device" in state["error"]
    assert not run.outcome_path("train").exists()


def test_stage_time_sums_a_stopped_attempt_and_the_one_that_resumed_it(tmp_path):
    run, _ = make_run(tmp_path)

    def stopped(ctx):
        time.sleep(0.3)
        raise Interrupted("SIGTERM")

    with pytest.raises(Interrupted):
        run.stage("tune", {"a": 1}, Count, stopped)
    again, stream = make_run(tmp_path)
    again.stage("tune", {"a": 1}, Count, lambda ctx: Count(1))
    fact = again.facts["tune"]
    assert fact.attempts == 2 and fact.wall_s >= 0.3
    assert "over 2 attempts" in stream.getvalue()
    assert read_json(again.outcome_path("tune"))["attempts"] == 2
    reused, _ = make_run(tmp_path)
    reused.stage("tune", {"a": 1}, Count, lambda ctx: Count(2))
    assert reused.facts["tune"].attempts == 2 and reused.facts["tune"].wall_s == fact.wall_s


def test_a_killed_attempt_counts_up_to_the_last_file_it_wrote(tmp_path):
    run, _ = make_run(tmp_path)
    stage_dir = run.root / "kfold"
    stage_dir.mkdir(parents=True)
    (stage_dir / ".inputs").write_text("x\n")
    atomic_write_json(stage_dir / ".attempts.json", {"spent_s": 5.0, "attempts": 1,
                                                     "open_since": time.time() - 100})
    (stage_dir / "fold1.json").write_text("{}")
    os.utime(stage_dir / "fold1.json", (time.time() - 40, time.time() - 40))  # killed 40 s ago
    spent_s, attempts = open_attempt(stage_dir)
    assert attempts == 2 and 64 < spent_s < 66
    assert "open_since" in read_json(stage_dir / ".attempts.json")


def test_a_changed_input_starts_the_count_again(tmp_path):
    run, _ = make_run(tmp_path)
    with pytest.raises(RuntimeError):
        run.stage("train", {"a": 1}, Count, lambda ctx: (_ for _ in ()).throw(RuntimeError("boom")))
    run.stage("train", {"a": 2}, Count, lambda ctx: Count(1))
    assert run.facts["train"].attempts == 1


def test_a_saved_outcome_with_a_value_of_another_type_is_redone_not_misread(tmp_path):
    run, _ = make_run(tmp_path)
    run.stage("count", {"a": 1}, Count, lambda ctx: Count(1))
    saved = read_json(run.outcome_path("count"))
    saved["outcome"] = {"value": "one"}  # a str where Count.value is an int
    atomic_write_json(run.outcome_path("count"), saved)
    again, stream = make_run(tmp_path)
    assert again.stage("count", {"a": 1}, Count, lambda ctx: Count(2)) == Count(2)
    assert "another layout" in stream.getvalue()
