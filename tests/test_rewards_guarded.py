"""A failed or malformed reward call becomes NaN for its own samples and a recorded reason."""

from __future__ import annotations

import math

import torch

from videogrpo.rewards.guarded import GuardedReward


class Scripted:
    """Answers each call with the next scripted result; an exception is raised."""

    components = ("vq", "ta")

    def __init__(self, *answers):
        self.answers = list(answers)

    def __call__(self, videos, prompts):
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


VIDEOS = torch.zeros(2, 3, 4, 4, 3)
PROMPTS = ["a", "b"]


def test_an_exception_costs_only_that_calls_samples():
    good = {"vq": torch.tensor([0.1, 0.2]), "ta": torch.tensor([0.3, 0.4], dtype=torch.float64)}
    reward = GuardedReward(Scripted(good, RuntimeError("CUDA out of\nmemory"), good))
    first = reward(VIDEOS, PROMPTS)
    failed = reward(VIDEOS, PROMPTS)
    third = reward(VIDEOS, PROMPTS)
    torch.testing.assert_close(first["ta"], torch.tensor([0.3, 0.4]))  # float32 from float64
    assert all(values.isnan().all() for values in failed.values())
    torch.testing.assert_close(third["vq"], good["vq"])
    failures = reward.take_failures()
    assert [(f.samples, f.reason) for f in failures] == [(2, "RuntimeError: CUDA out of memory")]
    assert reward.take_failures() == []


def test_malformed_answers_fail_the_call_and_say_why():
    reward = GuardedReward(
        Scripted(
            {"vq": torch.ones(2)},  # ta missing
            {"vq": torch.ones(3), "ta": torch.ones(3)},  # wrong count
            [0.5, 0.5],  # not a dict
        )
    )
    for _ in range(3):
        scores = reward(VIDEOS, PROMPTS)
        assert set(scores) == {"vq", "ta"} and scores["vq"].isnan().all()
    reasons = [f.reason for f in reward.take_failures()]
    assert "returned no ['ta']" in reasons[0]
    assert "3 scores for 2 videos" in reasons[1]
    assert "dict" in reasons[2]


def test_non_finite_scores_become_nan_and_extra_names_are_dropped():
    answer = {
        "vq": torch.tensor([math.inf, 0.5]),
        "ta": torch.tensor([0.1, -math.inf]),
        "extra": torch.ones(2),
    }
    scores = GuardedReward(Scripted(answer))(VIDEOS, PROMPTS)
    assert set(scores) == {"vq", "ta"}
    assert scores["vq"][0].isnan() and scores["vq"][1] == 0.5
    assert scores["ta"][1].isnan()
