"""The vLLM generation engine: the same ``generate(prompts, n=...) -> Rollouts`` contract as the HF and
torch engines (``r1flow.engine``), for GRPO rollouts (§2.2.1), rejection sampling (§2.3.3) and
evaluation (§3).

vLLM holds its own copy of the policy, so a trainer must push its weights after every optimizer
step. ``sync_weights`` does it in memory — no file is written: the trainer's state dict goes to
the engine's worker by ``collective_rpc`` (as ``torch.save`` bytes: vLLM re-pickles RPC arguments
between its processes, and the tensors it decoded cannot be) and is loaded through vLLM's
layer-wise *reload*. A second
plain ``load_weights`` is what breaks peers on CPU (``'Parameter' object has no attribute
'weight_loader'``: after the first load vLLM's CPU linear layers keep a prepacked copy and an
empty ``weight``); reload restores the loaders, loads, and prepacks again. Then the prefix cache
is reset, so no cached key/value of the old weights is reused.

``sleep``/``wake_up`` free and restore the engine's GPU memory between rollouts when it is
colocated with the trainer (CUDA only: vLLM refuses sleep mode on CPU).

``logprobs`` scores a fixed completion with the engine (teacher forcing, raw logits: T = 1), the
check that engine and trainer hold the same weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from r1flow.engine import Rollouts, assemble_rollouts, check_generate_args, encode_prompts, eos_token_ids, left_pad


def _reload_weights(worker, blob: bytes) -> int:
    """Runs in the vLLM worker process: unpack the state dict (``torch.save`` bytes, in memory) and
    load every tensor in one layer-wise reload (all at once: a partial reload would reset the
    layers it does not name)."""
    import io

    from vllm.config import set_current_vllm_config

    named = list(torch.load(io.BytesIO(blob), weights_only=True).items())
    with set_current_vllm_config(worker.vllm_config):
        worker.model_runner.reload_weights(weights_iterator=iter(named), is_checkpoint_format=True)
    return len(named)


class VLLMEngine:
    """Samples with an offline ``vllm.LLM`` started from ``model_dir`` (an HF folder: config,
    tokenizer, first weights); ``sync_weights`` keeps it on the trainer's current weights."""

    def __init__(self, model_dir: str | Path, tokenizer, *, model=None, dtype: str = "float32", seed: int = 0,
                 revision: str | None = None, trust_remote_code: bool = False,
                 max_model_len: int = 1024, tensor_parallel_size: int = 1, kv_cache_bytes: int | None = None,
                 gpu_memory_utilization: float = 0.5, sleep_mode: bool = False) -> None:
        """``sleep_mode`` (CUDA only): colocated with the trainer on one GPU — the engine sleeps
        (weights to the host, KV cache dropped) after each ``generate`` and wakes to take new
        weights or to sample."""
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # the reload function goes by RPC
        from vllm import LLM

        kwargs = dict(model=str(model_dir), tokenizer=str(model_dir), revision=revision, dtype=dtype, seed=seed,
                      enforce_eager=True, trust_remote_code=trust_remote_code,
                      max_model_len=max_model_len, tensor_parallel_size=tensor_parallel_size,
                      gpu_memory_utilization=gpu_memory_utilization, enable_prefix_caching=True)
        if kv_cache_bytes:
            kwargs["kv_cache_memory_bytes"] = kv_cache_bytes
        if sleep_mode:
            kwargs["enable_sleep_mode"] = True
        self.llm = LLM(**kwargs)
        self.dtype = getattr(torch, dtype)
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = eos_token_ids(model, tokenizer) if model is not None else [tokenizer.eos_token_id]
        self.sleeping, self.colocated = False, sleep_mode

    def generate(self, prompts: list[str], *, n: int, max_new_tokens: int, temperature: float,
                 top_p: float = 1.0, seed: int | None = None, suppress_eos: bool = False,
                 stop: tuple[str, ...] = ()) -> Rollouts:
        """``n`` samples per prompt; request ``i`` is seeded ``seed + i·n`` (vLLM seeds its sample ``j``
        with ``seed + i·n + j``), so the same call gives the same samples (tested on CPU; a different
        batch composition may still change them through batched kernels)."""
        from vllm import SamplingParams

        check_generate_args(prompts, n, max_new_tokens, temperature, top_p)
        if self.sleeping:
            self.wake_up()
        encoded = encode_prompts(self.tokenizer, prompts)
        requests = [{"prompt_token_ids": ids} for ids in encoded]
        params = [SamplingParams(n=n, temperature=temperature, top_p=top_p,
                                 max_tokens=max_new_tokens, min_tokens=max_new_tokens if suppress_eos else 0,
                                 ignore_eos=suppress_eos, seed=None if seed is None else seed + i * n,
                                 detokenize=bool(stop), stop_token_ids=self.eos_ids, stop=list(stop) or None,
                                 include_stop_str_in_output=True)
                  for i in range(len(prompts))]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        rows = [i for i in range(len(prompts)) for _ in range(n)]
        completions = [list(c.token_ids) or [self.pad_id] for out in outputs for c in out.outputs]
        width = max(len(c) for c in completions)
        ids = torch.full((len(completions), width), self.pad_id, dtype=torch.long)
        for r, c in enumerate(completions):
            ids[r, :len(c)] = torch.tensor(c, dtype=torch.long)
        out = assemble_rollouts([left_pad([encoded[i] for i in rows], self.pad_id)], [ids], rows,
                                self.tokenizer, self.pad_id, self.eos_ids, stop)
        for r, c in enumerate(completions):  # a row vLLM cut short (max_model_len) without an EOS:
            out.completion_mask[r, len(c):] = 0  # its padding is not an action
        if self.colocated:  # the trainer gets the GPU memory back until the next sync
            self.sleep()
        return out

    def sync_weights(self, model) -> None:
        """Push ``model``'s weights into the engine, in memory (HF parameter names; vLLM fuses q/k/v
        and gate/up itself)."""
        if self.sleeping:
            self.wake_up()
        import io

        buffer = io.BytesIO()  # one bytes object: the tensors vLLM decodes cannot be re-pickled
        torch.save({name: t.detach().to("cpu", self.dtype).contiguous() for name, t in model.state_dict().items()},
                   buffer)  # in the engine's dtype: half the bytes in bf16
        self.llm.collective_rpc(_reload_weights, args=(buffer.getvalue(),))
        self.llm.reset_prefix_cache()

    def logprobs(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
        """Log-probabilities of ``completion_ids`` after ``prompt_ids`` under the engine's weights
        (raw logits, T = 1)."""
        from vllm import SamplingParams

        full = list(prompt_ids) + list(completion_ids)
        out = self.llm.generate([{"prompt_token_ids": full}],
                                SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False), use_tqdm=False)[0]
        return [out.prompt_logprobs[j][full[j]].logprob for j in range(len(prompt_ids), len(full))]

    def sleep(self) -> None:
        """Free the engine's GPU memory for the trainer (weights kept on the host); CUDA only."""
        self.llm.sleep(level=1)
        self.sleeping = True

    def wake_up(self) -> None:
        """Back into GPU memory — first handing the trainer allocator's cached blocks to the driver,
        or the engine would not find the room it gave up."""
        from r1flow.train.memory import release_cached_memory

        release_cached_memory()
        self.llm.wake_up()
        self.sleeping = False
