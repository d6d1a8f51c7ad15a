"""Throttled progress lines (llsmflow.progress)."""

import logging

import pytest

from llsmflow.progress import format_seconds, progress_logger


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "test.progress"]


def test_first_last_and_one_line_per_interval(caplog):
    caplog.set_level(logging.INFO, logger="test.progress")
    clock = _Clock()
    report = progress_logger(logging.getLogger("test.progress"), "fused chunk", interval_s=10, clock=clock)
    for done in range(1, 1001):  # 1000 chunks, 0.125 s each (exact in binary): 125 s in all
        clock.now += 0.125
        report(done, 1000)
    lines = _lines(caplog)
    # the first, then one each time 10 s have passed since the last line (chunks 81, 161, …, 961), the last
    assert lines[0] == "fused chunk 1/1000 (0 %, 0 s elapsed)"  # no rate yet: no estimate
    assert [int(line.split()[2].split("/")[0]) for line in lines] == [*range(1, 1000, 80), 1000]
    assert "fused chunk 401/1000 (40 %, 50 s elapsed, ~1 min 15 s left)" in lines
    assert lines[-1] == "fused chunk 1000/1000 (100 %, 2 min 05 s elapsed)"


def test_time_left_ignores_set_up_before_the_first_unit(caplog):
    caplog.set_level(logging.INFO, logger="test.progress")
    clock = _Clock()
    report = progress_logger(logging.getLogger("test.progress"), "iteration", interval_s=0, clock=clock)
    clock.now += 30  # e.g. FFT planning
    for done in range(1, 5):
        clock.now += 2
        report(done, 10)
    assert _lines(caplog)[1:] == [
        "iteration 2/10 (20 %, 34 s elapsed, ~16 s left)",
        "iteration 3/10 (30 %, 36 s elapsed, ~14 s left)",
        "iteration 4/10 (40 %, 38 s elapsed, ~12 s left)",
    ]


def test_zero_interval_logs_every_call_and_unknown_total(caplog):
    caplog.set_level(logging.INFO, logger="test.progress")
    clock = _Clock()
    report = progress_logger(logging.getLogger("test.progress"), "frame", interval_s=0, clock=clock)
    for done in range(1, 4):
        clock.now += 2
        report(done, None)
    assert _lines(caplog) == ["frame 1 (2 s elapsed)", "frame 2 (4 s elapsed)", "frame 3 (6 s elapsed)"]


def test_format_seconds_and_bad_interval():
    assert [format_seconds(s) for s in (0.4, 59.4, 65, 3599, 7620)] == [
        "0 s",
        "59 s",
        "1 min 05 s",
        "59 min 59 s",
        "2 h 07 min",
    ]
    with pytest.raises(ValueError, match="interval_s -1 is invalid"):
        progress_logger(logging.getLogger("x"), "x", interval_s=-1)
