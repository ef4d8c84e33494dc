"""Progress bookkeeping: a job's events folded into the progress window and the status line."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nuke_plugin"))

from cvgen_nuke.progress import CANCELLED, DONE, FAILED, JobProgress, Notice, Outcome  # noqa: E402

from cvgen.protocol.client import Accepted, Done, FrameReady, Progress  # noqa: E402


def test_a_job_from_sending_to_done():
    p = JobProgress((1001, 1004))
    assert (p.percent, p.message) == (0, "sending the job")
    assert p.status("/out/v001") == "rendering: sending the job"
    p.apply(Accepted("j1", (1001, 1004), 0, "/out/v001"))
    assert p.job_id == "j1" and p.message == "0 of 4 frames done"
    p.apply(Progress("j1", 1001, 3, 20, 0.0375, 130.0))
    assert p.percent == 3
    assert p.message == "frame 1001, step 3/20; 0 of 4 frames done; about 2 min left"
    p.apply(FrameReady("j1", 1001, "/out/v001/n.1001.exr"))
    p.apply(Progress("j1", 1002, 1, 20, 0.3, 20.4))
    p.apply(Progress("j1", 1002, 1, 20, 0.2, 20.4))  # a late, lower fraction never moves the bar back
    assert p.percent == 30 and "1 of 4 frames done; about 20 s left" in p.message
    p.apply(Progress("j1", 1004, 20, 20, 1.0, 0.0))
    assert p.percent == 99, "100 only once the job is done"
    p.apply(Done("j1", {f: f"/out/v001/n.{f}.exr" for f in range(1001, 1005)}, "/out/v001"))
    p.apply(Outcome(DONE))
    assert p.percent == 100 and p.finished == {1001, 1002, 1003, 1004}
    assert p.status("/out/v001") == "done: 4 frames in /out/v001"


def test_cancelled_and_failed_jobs_say_what_was_kept():
    p = JobProgress((1, 10))
    p.apply(Accepted("j2", (1, 10), 0, "/o"))
    p.apply(FrameReady("j2", 1, "/o/n.0001.exr"))
    p.apply(Notice("the cancel did not reach the server: no answer"))
    assert p.message.endswith("the cancel did not reach the server: no answer")
    p.apply(Outcome(CANCELLED, "the job was cancelled"))
    assert p.status("/o") == "cancelled: 1 of 10 frames finished, in /o"
    assert p.percent == 0
    q = JobProgress((1, 10))
    q.apply(Outcome(FAILED, "the cvgen server refused the job: fg frame 3 is missing"))
    assert q.status("/o") == "failed: the cvgen server refused the job: fg frame 3 is missing (0 of 10 frames finished, in /o)"


def test_long_waits_read_in_hours():
    p = JobProgress((1, 1))
    p.apply(Accepted("j", (1, 1), 0, ""))
    p.apply(Progress("j", 1, 1, 50, 0.01, 3 * 3600.0))
    assert p.message.endswith("about 3.0 h left")
