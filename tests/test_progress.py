"""weightsep.progress: what long work prints, driven by a fake clock: plain lines at most every
`every` seconds in a log, one line rewritten in place on a terminal, -mode=o's round lines."""

import io

import pytest

from weightsep.progress import Progress, RoundReport, duration, plural


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("seconds, text", [(0, "0 s"), (42.4, "42 s"), (59.6, "1 min 00 s"), (61, "1 min 01 s"),
                                           (3599, "59 min 59 s"), (3600, "1 h 00 min"), (5025, "1 h 23 min"),
                                           (-3, "0 s")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_plural():
    assert [plural(1, "round"), plural(2, "round"), plural(1, "pass", "passes"), plural(3, "pass", "passes")] == \
        ["1 round", "2 rounds", "1 pass", "3 passes"]


def test_log_lines_at_most_every_interval_with_time_left():
    clock, out = Clock(), io.StringIO()
    bar = Progress(8, "trained", stream=out, every=10.0, clock=clock)
    for done in range(1, 9):
        clock.now += 4.0  # 4 s per unit: a line at 4 s, then the first update 10 s or more later
        bar.update(done, f"unit {done}")
    bar.finish()
    assert out.getvalue().splitlines() == [
        "trained: 1/8 (unit 1), 4 s elapsed, about 28 s left",
        "trained: 4/8 (unit 4), 16 s elapsed, about 16 s left",
        "trained: 7/8 (unit 7), 28 s elapsed, about 4 s left",
    ]


def test_terminal_line_is_rewritten_in_place():
    clock, out = Clock(), Terminal()
    bar = Progress(2, "trained", stream=out, clock=clock)
    clock.now += 30
    bar.update(1)
    clock.now += 30
    bar.update(2)
    bar.finish()
    first, second = "trained: 1/2, 30 s elapsed, about 30 s left", "trained: 2/2, 1 min 00 s elapsed"
    assert out.getvalue() == ("\r" + first + "\r" + second.ljust(len(first)) + "\r" + " " * len(second) + "\r")
    assert "\n" not in out.getvalue()


def test_round_report_lines_and_summary():
    clock, out = Clock(), io.StringIO()
    report = RoundReport(3, 10, 32, 2, stream=out, clock=clock)
    history = []
    for r, accs in enumerate(({"a": 0.5, "b": 0.7}, {"a": 0.6, "b": 0.8}, {"a": 0.7, "b": 0.9}), 1):
        clock.now += 100
        history.append(accs)
        report.round_done(r, 3, accs)
    report.finish(history)
    assert out.getvalue().splitlines() == [
        "round 1/3 done: mean test accuracy 0.600000; 1 min 40 s elapsed, about 3 min 20 s left",
        "round 2/3 done: mean test accuracy 0.700000; 3 min 20 s elapsed, about 1 min 40 s left",
        "round 3/3 done: mean test accuracy 0.800000; 5 min 00 s elapsed",
        "optimization done: 3 rounds x 10 passes x 32 steps of 2 tasks in 5 min 00 s; mean test accuracy "
        "0.600000 after round 1, 0.800000 after round 3",
    ]
