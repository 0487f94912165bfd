"""Training compute, so that "comparable compute" (paper Table 6: distillation vs. RL on the same
small model) is a number fixed before the runs. The SFT and GRPO trainers log it as the metric
``train_flops`` (cumulative), and GRPO can stop at a budget of it (``GRPOParams.max_train_flops``).

The usual transformer estimate (Kaplan et al. 2020, §2.1): a forward pass costs 2·N FLOPs per
token and a backward pass 4·N, with N the parameters that compute (``compute_params``: all but
the input embedding table, whose lookup costs nothing; a tied LM head counts). So SFT costs
6·N·(trained tokens), and a GRPO step (paper §2.2.1) costs

- generation: 2·N per prompt token (prefill) and per generated token, for every sample;
- the policy update: 6·N per sequence token, for each of ``mu`` passes over the rollout batch;
- log-probabilities of the old policy (only when ``mu`` > 1: with one pass they come from the
  update's own forward) and of the reference model (when the KL term is on): 2·N per token each.

Attention's sequence-length term is left out: at these lengths (≤ 100 tokens) it is under 5%.
"""

from __future__ import annotations


def compute_params(model) -> int:
    """N: the model's distinct parameters, less an input embedding table not shared with the head."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is embed.weight
    return total if tied else total - embed.weight.numel()


def sft_flops(params: int, tokens: int) -> float:
    """6·N·T: forward and backward over every token trained on (all epochs counted in ``tokens``).

    >>> sft_flops(1_000, 50)
    300000.0
    """
    return 6.0 * params * tokens


def grpo_step_flops(params: int, prompt_tokens: int, completion_tokens: int, *, mu: int = 1,
                    reference: bool = True, old_policy: bool | None = None) -> float:
    """One GRPO step over a rollout batch whose sequences hold ``prompt_tokens`` prompt tokens and
    ``completion_tokens`` generated tokens in all. ``old_policy``: whether old log-probs take a
    forward of their own (default: ``mu`` > 1; the trainer also needs it with several minibatches).

    >>> grpo_step_flops(1_000, 100, 300, mu=1, reference=True)  # 2N·400 + 6N·400 + 2N·400
    4000000.0
    """
    tokens = prompt_tokens + completion_tokens
    generation = 2.0 * params * tokens
    update = 6.0 * params * tokens * mu
    extra_forwards = (mu > 1 if old_policy is None else old_policy) + bool(reference)
    return generation + update + 2.0 * params * tokens * extra_forwards


def comparable(a: float, b: float, tolerance: float = 0.10) -> bool:
    """Within ``tolerance`` of each other, relative to the smaller: |a/b − 1| ≤ tol both ways.

    >>> comparable(1.05e12, 1.0e12), comparable(1.2e12, 1.0e12)
    (True, False)
    """
    if a <= 0 or b <= 0:
        raise ValueError(f"compute must be positive, got {a} and {b}")
    return max(a, b) / min(a, b) - 1.0 <= tolerance + 1e-12
