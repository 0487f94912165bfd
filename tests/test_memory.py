"""Activation checkpointing (``r1flow.train.memory``) changes memory, never the numbers: one GRPO
step and SFT steps with it give the same weights as without, on a model whose prompts are shared
by several rows (the path that needs the KV cache checkpointed layers drop)."""

from __future__ import annotations

import pytest
import torch

from r1flow.grpo.params import GRPOParams
from r1flow.grpo.rewarding import completion_reward
from r1flow.grpo.trainer import train_grpo
from r1flow.modeling import ModelArch, build_model, train_tokenizer
from r1flow.train.memory import is_checkpointing
from r1flow.train.sft import SFTParams, train_sft

ARCH = ModelArch(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)
PROMPTS = [{"prompt": f"q {i} a long shared prompt that several rows start with =", "gold": str(i), "source": "t"}
           for i in range(4)]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["q a b c d 1 2 3 = long shared prompt that several rows start with"] * 20, 300)


def _length_reward(completions, golds):
    return [len(c) / 40 for c in completions]


def _weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("mu", [1, 2])  # mu 2: old log-probs are a no-grad pass in training mode
def test_grpo_with_checkpointed_layers_trains_the_same_weights(tok, mu):
    runs = {}
    for checkpointing in (False, True):
        model = build_model(ARCH, tok, seed=0)
        params = GRPOParams(steps=2, prompts_per_step=2, group_size=3, max_new_tokens=6, lr=1e-2, beta=0.05, mu=mu,
                            micro_batch_size=2, gradient_checkpointing=checkpointing)
        train_grpo(model, tok, PROMPTS, [("len", 1.0, completion_reward(_length_reward))], params)
        runs[checkpointing] = _weights(model)
        assert model.is_gradient_checkpointing == checkpointing
    assert (runs[True] - runs[False]).abs().max() < 1e-5
    assert (runs[False] - _weights(build_model(ARCH, tok, seed=0))).abs().max() > 1e-3  # it did train


def test_sft_with_checkpointed_layers_trains_the_same_weights(tok):
    examples = [{"prompt": "a long shared prompt that several rows start with =", "completion": f" {i} b c"}
                for i in range(6)]
    runs = {}
    for checkpointing in (False, True):
        model = build_model(ARCH, tok, seed=0)
        train_sft(model, tok, examples, SFTParams(max_steps=3, batch_size=6, lr=1e-2, min_shared_prefix=4,
                                                  gradient_checkpointing=checkpointing))
        runs[checkpointing] = _weights(model)
        model.train()
        assert is_checkpointing(model) == checkpointing
    assert (runs[True] - runs[False]).abs().max() < 1e-5
