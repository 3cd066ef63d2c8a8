"""Several teachers sharing the student's tokenizer: fixed weights, or one teacher per token by
its confidence."""

import numpy as np
import pytest
import torch

from distill import LossConfig
from distill.teacher_outputs import ChosenTeacher


class Fixed:
    """A teacher provider that gives the same outputs for any batch."""

    def __init__(self, **outputs):
        self.out = outputs

    def outputs(self, split, idx, batch):
        return dict(self.out)


def test_the_teacher_with_the_lowest_confidence_score_is_taken_at_each_token():
    a = Fixed(teacher_entropy=torch.tensor([[0.1, 3.0, 2.0]]), teacher_nll=torch.tensor([[5.0, 0.2, 2.0]]),
              teacher_logprobs=torch.zeros(1, 3, 2), teacher_indices=torch.zeros(1, 3, 2, dtype=torch.int32))  # fmt: skip
    b = Fixed(teacher_entropy=torch.tensor([[1.0, 0.5, 2.0]]), teacher_nll=torch.tensor([[0.3, 4.0, 2.0]]),
              teacher_logprobs=torch.ones(1, 3, 2), teacher_indices=torch.ones(1, 3, 2, dtype=torch.int32))  # fmt: skip
    idx = np.arange(1)
    surest = ChosenTeacher([a, b], "lowest_entropy").outputs("train", idx, None)
    assert surest["teacher_logprobs"][0, :, 0].tolist() == [0.0, 1.0, 0.0]  # a, b, then a tie: the first
    assert surest["teacher_indices"][0, :, 1].tolist() == [0, 1, 0] and surest["teacher_indices"].dtype == torch.int32
    assert surest["teacher_entropy"][0].tolist() == pytest.approx([0.1, 0.5, 2.0])
    best = ChosenTeacher([a, b], "lowest_loss").outputs("train", idx, None)
    assert best["teacher_logprobs"][0, :, 0].tolist() == [1.0, 0.0, 0.0]


def test_combining_rules_are_checked():
    params = {"temperature": 1.0, "top_k": 4}
    two = LossConfig({"forward_kl": 1.0}, params, teacher_weights=(3.0, 1.0))
    assert two.weights_of_teachers(2) == [0.75, 0.25] and "weighted 0.75 / 0.25" in two.describe()
    chosen = LossConfig({"forward_kl": 1.0, "ce": 1.0}, params, teacher_weights=(1.0, 1.0), combine="lowest_loss")
    assert chosen.needs() == {"topk", "confidence"} and "lowest loss on the reference" in chosen.describe()
    # self-evolution KD whose prior is the combined teachers' (the chosen one at each token)
    evolving = LossConfig({"self_evolution_kd": 1.0, "ce": 0.5}, {**params, "self_evolution_prior": 1.0}, teacher_weights=(1.0, 1.0), combine="lowest_loss")
    assert evolving.needs() == {"topk", "confidence"} and "self-evolution KD" in evolving.describe()
    for kwargs, message in (
        ({"combine": "lowest_entropy"}, "^combine: lowest_entropy chooses among several teachers"),
        ({"combine": "vote", "teacher_weights": (1.0, 1.0)}, "^combine: must be one of weights, lowest_entropy, lowest_loss"),
        ({"teacher_weights": (1.0, -1.0)}, "^teacher_weights: must be >= 0"),
    ):
        with pytest.raises(ValueError, match=message):
            LossConfig({"forward_kl": 1.0}, params, **kwargs)
    with pytest.raises(ValueError, match=r'^combine: lowest_entropy chooses .*; hidden need combine = "weights"'):
        LossConfig({"forward_kl": 1.0, "hidden": 1.0}, params, teacher_weights=(1.0, 1.0), combine="lowest_entropy")
