"""A lean KV-cache sampling loop: the ``torch`` generation engine.

Same contract as ``HFEngine`` (``r1flow.engine``: grouped rows, left-padded prompts, right-padded
completions, a mask through the first EOS, ``finish_reasons``), and the same distribution:
softmax(logits / T) restricted to the top-p nucleus, or greedy at T = 0. What it saves over
``model.generate`` on small models, where per-token Python overhead dominates the matmuls:

- each distinct prompt is prefilled once and its KV cache repeated ``n`` times
  (``DynamicCache.batch_repeat_interleave``), instead of prefilling every one of the G copies;
- one decode step is one forward pass, one softmax and one ``multinomial``; no logits-processor
  chain, no stopping-criteria objects, and the loop ends when every row has emitted an EOS;
- only the last position's logits are projected (``logits_to_keep=1``), in prefill too.

Position ids come from the attention mask (cumsum − 1), as in ``generate`` and in the trainer's
log-probs (``r1flow.grpo.logprobs``), so sampled tokens and trained log-probs agree.
"""

from __future__ import annotations

import torch

from r1flow.attention import use_native_gqa
from r1flow.engine import HFEngine, Rollouts, assemble_rollouts, check_generate_args, left_pad, seeded


def nucleus_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set to -inf every logit outside the smallest set whose probability reaches ``top_p``
    (the most likely token always stays), as transformers' ``TopPLogitsWarper`` does.

    >>> nucleus_filter(torch.log(torch.tensor([[0.5, 0.3, 0.2]])), 0.7).isinf().tolist()
    [[False, False, True]]
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # [B, V]
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative - sorted_logits.softmax(dim=-1) >= top_p  # mass before this token already ≥ p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


class DecodeEngine(HFEngine):
    """Samples with a hand-written KV-cache loop on the trainer's own model object (set-up and
    weight sync as ``HFEngine``; only ``generate`` differs)."""

    def __init__(self, model, tokenizer, batch_size: int = 64) -> None:
        super().__init__(model, tokenizer, batch_size)
        use_native_gqa(model)

    def sync_weights(self, model) -> None:
        super().sync_weights(model)
        use_native_gqa(model)

    def generate(self, prompts: list[str], *, n: int, max_new_tokens: int, temperature: float,
                 top_p: float = 1.0, seed: int | None = None, suppress_eos: bool = False) -> Rollouts:
        check_generate_args(prompts, n, max_new_tokens, temperature, top_p)
        encoded = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        if not all(encoded):
            raise ValueError(f"prompt {[bool(e) for e in encoded].index(False)} is empty after tokenization")
        per_call = max(1, self.batch_size // n)  # distinct prompts per forward batch
        was_training = self.model.training
        self.model.eval()
        prompt_parts, completion_parts = [], []
        try:
            with seeded(seed, self.model.device), torch.inference_mode():
                for start in range(0, len(encoded), per_call):
                    ids, mask = left_pad(encoded[start:start + per_call], self.pad_id)
                    completion_parts.append(self._sample(ids, mask, n, max_new_tokens, temperature, top_p,
                                                         suppress_eos))
                    prompt_parts.append((ids.repeat_interleave(n, dim=0), mask.repeat_interleave(n, dim=0)))
        finally:
            self.model.train(was_training)
        rows = [i for i in range(len(prompts)) for _ in range(n)]
        return assemble_rollouts(prompt_parts, completion_parts, rows, self.tokenizer, self.pad_id, self.eos_ids)

    def _sample(self, ids: torch.Tensor, mask: torch.Tensor, n: int, max_new_tokens: int,
                temperature: float, top_p: float, suppress_eos: bool) -> torch.Tensor:
        """Completion ids [B·n, ≤max_new_tokens] for prompts ``ids`` [B, P], ``n`` samples each."""
        device = self.model.device
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1)
        cache = out.past_key_values
        logits = out.logits[:, -1, :].repeat_interleave(n, dim=0)  # [B·n, V]
        if n > 1:
            cache.batch_repeat_interleave(n)
        mask = mask.repeat_interleave(n, dim=0)  # [B·n, P]
        next_pos = positions[:, -1:].repeat_interleave(n, dim=0) + 1  # [B·n, 1]
        eos = torch.tensor(self.eos_ids, device=device)
        done = torch.zeros(mask.size(0), dtype=torch.bool, device=device)
        tokens = []
        for step in range(max_new_tokens):
            token = self._pick(logits, temperature, top_p, eos if suppress_eos else None)  # [B·n]
            token = token.masked_fill(done, self.pad_id)
            tokens.append(token)
            done |= torch.isin(token, eos)
            if step + 1 == max_new_tokens or bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = self.model(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos,
                             past_key_values=cache, use_cache=True)
            cache, logits, next_pos = out.past_key_values, out.logits[:, -1, :], next_pos + 1
        return torch.stack(tokens, dim=1).cpu()

    @staticmethod
    def _pick(logits: torch.Tensor, temperature: float, top_p: float, banned: torch.Tensor | None) -> torch.Tensor:
        logits = logits.float()
        if banned is not None:
            logits[:, banned] = float("-inf")
        if temperature == 0:
            return logits.argmax(dim=-1)
        probs = nucleus_filter(logits / temperature, top_p).softmax(dim=-1)
        return torch.multinomial(probs, 1).squeeze(1)
