"""The profiler target's argument handling (benchmarks/micro/profile_kernels.py); running it needs a GPU."""

import pytest

from benchmarks.micro.profile_kernels import main, parse_target


def test_targets_parse():
    assert parse_target("decode:tq3:32x32768") == ("decode", "tq3", (32, 32768))
    assert parse_target("store:k4v3:4096") == ("store", "k4v3", (4096,))


@pytest.mark.parametrize("text, match", [
    ("prefill:tq3:8x8", "expected decode:PRESET"),
    ("decode:tq3", "expected decode:PRESET"),
    ("decode:tq3:32", "BATCHxCONTEXT"),
    ("decode:tq3:32x100", "multiple of the block size"),
    ("store:tq3:0", "each >= 1"),
    ("store:tq3:1x2", "TOKENS"),
    ("store:tq3:many", "must be integers"),
    ("decode:tq9:1x16", "allowed values"),
])
def test_bad_targets_name_what_is_allowed(text, match):
    with pytest.raises(ValueError, match=match):
        parse_target(text)


def test_cli_refuses_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["decode:tq3:1x16", "--launches", "0"])
    assert "--launches must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["store:tq3:x"])
    assert "must be integers" in capsys.readouterr().err


def test_trace_summary_means_per_call():
    from benchmarks.micro.profile_kernels import summarize

    calls = [[("rot", 0.0, 5.0), ("mma", 6.0, 100.0), ("merge", 110.0, 10.0)],
             [("rot", 500.0, 7.0), ("mma", 508.0, 110.0), ("merge", 620.0, 12.0)]]
    rows, span = summarize(calls)
    assert rows == [("rot", 1, 6.0), ("mma", 1, 105.0), ("merge", 1, 11.0)]
    assert span == (120.0 + 132.0) / 2
    # a kernel launched twice a call: counted twice, its time summed within the call
    rows, _ = summarize([[("store", 0.0, 3.0), ("store", 4.0, 5.0)]])
    assert rows == [("store", 2, 8.0)]
    with pytest.raises(ValueError, match="at least one call"):
        summarize([])
    with pytest.raises(ValueError, match="at least one kernel"):
        summarize([[]])
