"""The study's clock (chimuf.core.plan.StudyClock) as a run teaches it: epochs from the units that
finished, and the stages whose units run several at a time in a pool."""

from __future__ import annotations

from chimuf.core.plan import Plan, StudyClock, Work, schedule, trial_unit


def run(clock: StudyClock, stage: str, name: str, epochs: range, epoch_s: float, most: int = 20) -> str:
    """Unit (stage, name) reports `epochs` at `epoch_s` seconds each; what the clock said last."""
    after = clock.eta(stage, name)
    said = ""
    for epoch in epochs:
        said = after(epoch, most, epoch_s)
    return said


def trainings_then_a_trial_and_the_final() -> Plan:
    return Plan(stages=["train", "tune", "final", "report"],
                work=[Work("train", "a", 10, 5, 20, 1.0, "training"),
                      Work("train", "b", 10, 5, 20, 1.0, "training"),
                      Work("tune", "trial_0", 10, 5, 20, 1.0),
                      Work("final", "final", 10, 5, 12, 1.0, "training")])


def test_a_finished_training_moves_the_epochs_of_the_trainings_not_finished_and_not_the_trials():
    clock = StudyClock(trainings_then_a_trial_and_the_final())
    run(clock, "train", "a", range(1, 19), 1.0)  # a ran 18 epochs where the plan said 10
    said = run(clock, "train", "b", range(1, 2), 1.0)  # b starts: a has ended
    # (18 + 10) / (10 + 10) = 1.4 (the plan's guess counts as one finished unit): b 14 epochs, 13
    # left; the final model 14, clamped to its most 12; the trial is another kind: still 10
    assert said == "study ETA 35s (14s-51s)"


def test_a_unit_said_done_teaches_its_epochs_and_a_failed_or_reused_one_teaches_nothing():
    clock = StudyClock(trainings_then_a_trial_and_the_final())
    clock.unit_done("train", "a", epochs_run=6)  # (6 + 10) / 20 = 0.8: b 8 epochs, the final 8
    assert run(clock, "train", "b", range(1, 2), 1.0) == "study ETA 25s (14s-51s)"

    quiet = StudyClock(trainings_then_a_trial_and_the_final())
    run(quiet, "train", "a", range(1, 19), 1.0)
    quiet.unit_done("train", "a", learn=False)  # its worker died at epoch 18: no lesson
    assert run(quiet, "train", "b", range(1, 2), 1.0) == "study ETA 29s (14s-51s)"


def four_trainings(slots: int) -> Plan:
    return Plan(stages=["train", "report"], slots={"train": slots} if slots > 1 else {},
                work=[Work("train", name, 10, 10, 10, 1.0) for name in "abcd"])


def test_a_pooled_stage_counts_its_units_running_side_by_side_not_one_after_another():
    clock = StudyClock(four_trainings(1))
    clock.pooled("train", 2)
    run(clock, "train", "a", range(1, 2), 2.0, most=10)  # two at once: 2 s an epoch, the plan said 1
    said = run(clock, "train", "b", range(1, 2), 2.0, most=10)
    # a and b: 9 epochs × 2 s left each, side by side; then c and d, 10 × 1 s × pace 2, side by side
    assert said == "study ETA 38s (38s-38s)"
    alone = StudyClock(four_trainings(1))  # the same epochs one after another: the sum
    assert run(alone, "train", "a", range(1, 2), 2.0, most=10) == "study ETA 1m18s (1m18s-1m18s)"


def test_a_pooled_unit_that_ends_frees_its_worker_for_the_next_and_teaches_its_epochs():
    plan = Plan(stages=["train", "report"], slots={"train": 2},
                work=[Work("train", name, 10, 5, 20, 1.0, "training") for name in "abc"])
    clock = StudyClock(plan)
    run(clock, "train", "b", range(1, 2), 1.0)
    run(clock, "train", "a", range(1, 6), 1.0)  # a stops at its fewest: 5 epochs
    clock.unit_done("train", "a")  # the pool says so; b goes on beside c
    said = run(clock, "train", "b", range(2, 3), 1.0)
    # (5 + 10) / 20 = 0.75: b 7.5 epochs, 5.5 left; c 7.5 on a's worker; at most b's 18, c's 20
    assert said == "study ETA 8s (5s-20s)"


def test_the_pace_learnt_in_a_pool_gives_way_to_the_pace_of_units_that_run_alone():
    plan = Plan(stages=["train", "tune", "final"], slots={"train": 2},
                work=[Work("train", "a", 2, 2, 2, 1.0), Work("train", "b", 2, 2, 2, 1.0),
                      Work("tune", "trial_0", 2, 2, 2, 1.0), Work("final", "final", 10, 10, 10, 1.0)])
    clock = StudyClock(plan)
    run(clock, "train", "a", range(1, 3), 3.0, most=2)  # sharing the machine: 3 s an epoch, the plan said 1
    clock.unit_done("train", "a")
    # no unit has run alone yet: the trial and the final model at the run's pace, 3
    assert run(clock, "train", "b", range(1, 3), 3.0, most=2) == "study ETA 36s (36s-36s)"
    # the trial's first epoch takes the plan's 1 s: the final model at 10 × 1 s, not at the pool's pace
    assert run(clock, "tune", "trial_0", range(1, 2), 1.0, most=2) == "study ETA 11s (11s-11s)"


def test_units_reused_or_of_stages_gone_by_are_not_waited_for():
    clock = StudyClock(trainings_then_a_trial_and_the_final())
    clock.unit_done("train", "b", learn=False)  # saved by an earlier attempt, reused
    assert run(clock, "train", "a", range(1, 2), 1.0) == "study ETA 29s (14s-51s)"  # a 9, trial 10, final 10
    run(clock, "train", "a", range(2, 11), 1.0)  # a runs its 10 epochs, as planned
    # the final model reports: a trial that never ran (the search ended early) will not now
    assert run(clock, "final", "final", range(1, 2), 1.0, most=12) == "study ETA 9s (4s-11s)"


def test_a_plan_with_a_pool_says_its_stage_time_as_scheduled_on_its_workers():
    plan = Plan(stages=["train"], slots={"train": 2},
                work=[Work("train", name, 10, 5, 20, 1.0) for name in "abc"])
    assert plan.total_s() == 20 and plan.range_s() == (10, 40)
    assert "(15-60 epochs in all, 1s each, 2 at a time): about 20s" in plan.lines()[1]


def test_schedule_gives_each_waiting_unit_to_the_first_free_worker():
    assert schedule([], [(4, 4, 4)] * 3, 1) == (12, 12, 12)
    assert schedule([], [(4, 4, 4)] * 3, 2) == (8, 8, 8)  # the third waits for a worker
    assert schedule([(10, 10, 10), (1, 1, 1)], [(3, 3, 3)], 2) == (10, 10, 10)  # it fits beside the long one
    assert schedule([(5, 0, 9)], [], 4) == (5, 0, 9)


def test_a_trial_is_the_same_unit_to_keras_tuner_and_to_the_plan():
    """Keras Tuner pads its ids to the budget's digits ("03" of 10 trials): unmatched, the clock
    took every trial of the paper's search for a unit it did not know and waited for all ten."""
    assert trial_unit("03") == trial_unit("3") == trial_unit(3) == "trial_3"
    plan = Plan(stages=["tune"], work=[Work("tune", trial_unit(i), 10, 5, 20, 1.0) for i in range(10)])
    clock = StudyClock(plan)
    clock.eta("tune", trial_unit("00"))(1, 20, 1.0)
    assert ("tune", "trial_0") in clock.running and clock.running[("tune", "trial_0")].unit is plan.work[0]
