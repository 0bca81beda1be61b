"""The decode loop's thread count for steps of many rows (``step_threads.StepThreads``): each
count is measured before any comparison, the cheaper per row wins, the other is measured again
now and then, so a change of the machine's load changes the choice."""

from __future__ import annotations

from ensemble_core.backends.step_threads import StepThreads


def _run(choice: StepThreads, steps: int, cost_per_row: dict[int, float], rows: int = 64) -> list[int]:
    used = []
    for _ in range(steps):
        threads = choice.choose(rows)
        choice.measured(threads, rows, cost_per_row[threads] * rows)
        used.append(threads)
    return used


def test_few_rows_keep_the_narrow_count_and_many_rows_try_both_first() -> None:
    choice = StepThreads(1, 2, wide_rows=16, explore_every=8)
    assert choice.choose(15) == 1
    assert _run(choice, 2, {1: 0.004, 2: 0.002})[:2] == [2, 1]


def test_the_cheaper_count_wins_and_the_other_is_measured_again_now_and_then() -> None:
    choice = StepThreads(1, 2, wide_rows=16, explore_every=8)
    used = _run(choice, 64, {1: 0.004, 2: 0.002})
    assert used.count(2) > 0.8 * len(used)
    assert 1 in used[8:]  # re-measured, not forgotten


def test_a_busier_machine_moves_the_choice_to_one_thread_and_back() -> None:
    choice = StepThreads(1, 2, wide_rows=16, explore_every=8)
    _run(choice, 32, {1: 0.004, 2: 0.002})  # idle: two threads are faster
    loaded = _run(choice, 64, {1: 0.004, 2: 0.009})  # the other core got busy
    assert loaded[-16:].count(1) >= 14
    idle_again = _run(choice, 64, {1: 0.004, 2: 0.002})
    assert idle_again[-16:].count(2) >= 14


def test_one_core_never_goes_wide() -> None:
    choice = StepThreads(1, 1)
    assert choice.choose(128) == 1
