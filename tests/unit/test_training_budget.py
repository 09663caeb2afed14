"""The training time budget (`enginesmith train --time-budget`): re-planned once after the first epoch, then a
stop before an epoch that would end past 1.05x the budget. Expected values worked out by hand."""

from __future__ import annotations

from enginesmith.training.loop import _fit_time_budget


def test_first_epoch_re_plans_to_the_epochs_that_fit():
    # 100 s budget, first epoch took 30 s: 100 // 30 = 3 epochs fit; 30 + 30 = 60 <= 105, so go on
    assert _fit_time_budget(100.0, 30.0, 1, 10) == (3, False)
    # a plan already within the budget stays; one epoch at least, even if the first alone overran
    assert _fit_time_budget(100.0, 30.0, 1, 2) == (2, False)
    assert _fit_time_budget(100.0, 150.0, 1, 10) == (1, False)


def test_later_epochs_stop_before_overrunning_and_never_re_plan():
    # after 2 epochs in 90 s (45 s each) the next would end at 135 s > 105 s: stop with 2 of 3 done
    assert _fit_time_budget(100.0, 90.0, 2, 3) == (3, True)
    # 2 epochs in 60 s: the third ends at 90 s <= 105 s
    assert _fit_time_budget(100.0, 60.0, 2, 3) == (3, False)
    # the last planned epoch is done: nothing to stop
    assert _fit_time_budget(100.0, 99.0, 3, 3) == (3, False)
    # exactly at 1.05x is not past it
    assert _fit_time_budget(100.0, 70.0, 2, 5) == (5, False)
