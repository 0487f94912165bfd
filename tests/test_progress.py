"""Stage progress as people see it: ETA and the text of the terminal line and the Prefect artifact."""

from __future__ import annotations

import pytest

from tasks.progress import duration, eta_seconds, progress_text


@pytest.mark.parametrize("done, remaining, elapsed, eta", [
    (30, 70, 60.0, 140.0),   # 2 s a step, 70 steps left
    (1, 0, 5.0, 0.0),        # finished
    (0, 10, 3.0, None),      # no step yet: no rate to go by
    (0, 0, 0.0, 0.0),        # a phase whose only event is its last step
    (10, 90, 1.0, 9.0),      # a resumed phase counts only the steps it did itself
])
def test_eta_is_the_phase_rate_so_far(done, remaining, elapsed, eta):
    assert eta_seconds(done, remaining, elapsed) == eta


@pytest.mark.parametrize("seconds, text", [(None, "?"), (0.4, "0 s"), (59.6, "1 min 00 s"), (80, "1 min 20 s"),
                                           (3725, "1 h 02 min")])
def test_duration_reads_like_a_person_would_say_it(seconds, text):
    assert duration(seconds) == text


def test_progress_text_names_phase_step_eta_and_the_current_value():
    assert progress_text("GRPO", 30, 100, 140.0, {"reward": 0.4213}) == \
        "GRPO step 30 of 100 · ETA 2 min 20 s · reward 0.4213"
    assert progress_text("", 1, 4, None, {}) == "step 1 of 4 · ETA ?"
