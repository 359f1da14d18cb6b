"""benchmarks.eta_replay: a run's study.log replayed, as the run said its ETA and through this
checkout's clock (--reclock)."""

from __future__ import annotations

from benchmarks import eta_replay
from chimuf.core.plan import TRAINING, Plan, Work


def test_eta_replay_compares_what_the_clock_said_with_the_real_time_left(tmp_path, capsys):
    log = tmp_path / "study.log"
    log.write_text("2026-12-05 10:00:00 [train] running\n"
                   "2026-12-05 10:01:00   model1 epoch 1/9: loss 0.7 in 60s; study ETA 8m (6m-12m)\n"
                   "2026-12-05 10:05:00   model1 epoch 5/9: loss 0.6 in 60s; study ETA 1h02m\n"
                   "2026-12-05 10:10:00 [report] done in 1s\n")
    said, total = eta_replay.read_log(log)
    assert total == 600 and [s.at_s for s in said] == [60, 300]
    assert said[0] == eta_replay.Said(60, 480, 360, 720) and said[1].eta_s == 3720 and said[1].low_s is None
    assert eta_replay.main([str(log), "--at", "0.1"]) == 0
    # at 10 %: 8 min said, 9 min really left: ratio 0.89, inside ±25 % and inside the range
    assert "| 10% | 8.0 min | 6.0-12.0 min | 9.0 min | 0.89 | yes | yes |" in capsys.readouterr().out



def pooled_log() -> str:
    """Two trainings in a pool of two, 6 s an epoch as planned; one stops early at epoch 10, the
    other runs 12; then a minute of report. Lines 6 s apart; the plan block is what Plan.lines() prints."""
    plan = Plan(stages=["train", "report"], slots={"train": 2}, fixed={"report": 60.0},
                work=[Work("train", name, 10, 5, 20, 6.0, TRAINING) for name in ("m1", "m2")])
    lines = ["[train] running", *plan.lines(), "  2 units in 2 worker processes of 1 TensorFlow threads each"]
    for epoch in range(1, 13):
        for unit in ("m1", "m2") if epoch <= 10 else ("m2",):
            lines.append(f"  {unit} epoch {epoch}/20: loss 0.5 in 6s; study ETA 9m00s (1m00s-9m00s)")
        if epoch == 10:
            lines.append("  m1: stopped early after epoch 10; best epoch 5")
    stamps = [f"2026-12-05 10:{i // 10:02d}:{i % 10 * 6:02d} {line}" for i, line in enumerate(lines)]
    return "\n".join([*stamps, "2026-12-05 10:06:00 [report] done in 60s"]) + "\n"


def test_reclock_rebuilds_the_plan_from_its_printed_lines_and_replays_the_epochs(tmp_path, capsys):
    log = tmp_path / "study.log"
    log.write_text(pooled_log())
    plan = eta_replay.plan_of([line.split(" ", 2)[2] for line in log.read_text().splitlines()[1:5]])
    assert plan.slots == {"train": 2} and plan.fixed == {"report": 60.0}
    units = [(w.epochs, w.fewest, w.most, w.epoch_s, w.kind) for w in plan.work]
    assert units == [(10, 5, 20, 6.0, TRAINING)] * 2

    again = eta_replay.reclock(eta_replay.stamped(log))
    assert len(again) == 22 and all(s.low_s <= s.eta_s <= s.high_s for s in again)
    # m1's first epoch: 9 × 6 s left beside m2's 10 × 6 s, on two workers, then the report's minute
    assert again[0].eta_s == 120  # summed, as the clock did before: 54 + 60 + 60 = 174
    assert again[-1].eta_s == 66  # m2's 12th epoch, past its estimate: one more, then the report
    assert eta_replay.main([str(log), "--reclock", "--at", "0.1"]) == 0
    assert "the same epochs through this checkout's clock (22 ETA lines):" in capsys.readouterr().out
