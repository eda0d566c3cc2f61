"""progress: stage messages go through logging, rate-limited, never print()."""

import logging

from mpq_export.util.progress import Progress


def test_progress_logs_start_rate_limited_updates_and_done(caplog, capsys):
    caplog.set_level(logging.INFO, logger="mpq_export")
    with Progress("calibrate", 100, every_s=3600) as p:
        for i in range(1, 100):
            p.update(i, "steps")  # within every_s: silent
        p.update(100, "steps")  # the last one always speaks
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[0] == "[calibrate] started (100 steps)"
    assert len(msgs) == 3 and msgs[1].startswith("[calibrate] 100/100 steps") and msgs[2].startswith("[calibrate] done")
    assert capsys.readouterr().out == ""


def test_no_done_message_after_an_error(caplog):
    caplog.set_level(logging.INFO, logger="mpq_export")
    try:
        with Progress("validate", 2):
            raise ValueError("boom")
    except ValueError:
        pass
    assert not any("done" in r.getMessage() for r in caplog.records)
