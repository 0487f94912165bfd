"""Two CPU ranks through ``accelerate launch`` reach the same parameters after a GRPO step as one
process on the whole batch: loss denominators and gradients are summed over ranks.

ENVIRONMENT trap: ``accelerate launch --cpu --num_processes 2`` silently runs ONE process; two
gloo ranks need ``--multi_gpu --num_processes 2`` and ``Accelerator(cpu=True)`` in the script.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from r1flow.engine import HFEngine
from r1flow.grpo.logprobs import token_logprobs
from r1flow.grpo.params import GRPOParams
from r1flow.modeling import ModelArch, build_model, save_model, train_tokenizer

SCRIPT = Path(__file__).with_name("dist_grpo_step.py")
ROOT = SCRIPT.parent.parent


@pytest.mark.parametrize("mode,sharding", [("token_mean", "ddp"), ("sequence_mean", "ddp"), ("token_mean", "fsdp")])
def test_two_ranks_equal_one_process(tmp_path, mode, sharding):
    tok = train_tokenizer(["a b c d e f g 1 2 3 + = q <think> </think> bb"] * 20, 280)
    model = build_model(ModelArch(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128),
                        tok, seed=0)
    save_model(model, tok, tmp_path / "model")
    prompts = ["q 1 =", "q 22 b =", "q 3 bb b =", "q 4 ="]  # differing lengths: left padding differs per rank
    out = HFEngine(model, tok).generate(prompts, n=4, max_new_tokens=8, temperature=1.0, seed=5)
    lengths = torch.tensor([8, 1, 3, 5, 2, 8, 4, 6, 1, 1, 7, 8, 2, 3, 4, 5])  # unequal tokens on the two ranks
    out.completion_mask = (torch.arange(8)[None, :] < lengths[:, None]).long()
    ids = torch.cat([out.prompt_ids, out.completion_ids], 1)
    with torch.no_grad():
        logp = token_logprobs(model, ids, torch.cat([out.prompt_mask, out.completion_mask], 1), out.prompt_ids.size(1))
    gen = torch.Generator().manual_seed(1)
    params = GRPOParams(prompts_per_step=4, group_size=4, max_new_tokens=8, loss_agg=mode, micro_batch_size=3,
                        lr=1e-3, eps_low=0.1, eps_high=0.1)
    torch.save({"prompt_ids": out.prompt_ids, "prompt_mask": out.prompt_mask, "completion_ids": out.completion_ids,
                "completion_mask": out.completion_mask, "advantages": torch.randn(16, generator=gen),
                "old_logp": logp + 0.2 * torch.randn(logp.shape, generator=gen), "params": params.model_dump()},
               tmp_path / "batch.pt")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "ACCELERATE_USE_CPU": "true"}
    extra = ["fsdp"] if sharding == "fsdp" else []  # FSDP2 shards, 8 and 4 rows on the two ranks
    single = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), str(tmp_path / "one"), *extra],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", "29517", str(SCRIPT), str(tmp_path), str(tmp_path / "two"), *extra]
    double = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = torch.load(tmp_path / "one" / "params.pt"), torch.load(tmp_path / "two" / "params.pt")
    assert (one["world"], two["world"]) == (1, 2)
    # Adam's first step hardly depends on the gradients' scale; their norm does: summed, not averaged
    assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4)
    rows = len(two["logp"])  # rank 0's rows are the first ones: their no-grad log-probs agree
    assert torch.allclose(two["logp"], one["logp"][:rows], atol=1e-5)
    moved = max((one["params"][n] - p).abs().max().item() for n, p in model.named_parameters())
    assert moved > 5e-4  # the step did something (AdamW's first step moves a parameter by about lr)
    for name, value in one["params"].items():  # within 1% of a step: Adam's g/|g| magnifies float noise
        assert torch.allclose(two["params"][name], value, rtol=0, atol=1e-5), name  # in near-zero gradients
