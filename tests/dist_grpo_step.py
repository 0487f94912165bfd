"""One GRPO optimizer step on one rank's half of a saved rollout batch (run by test_distributed
under ``accelerate launch --multi_gpu --num_processes 2`` with ``Accelerator(cpu=True)``, or as
one plain process on the whole batch). Writes the updated parameters to OUT/params.pt (rank 0).
With ``fsdp`` the model is sharded over the ranks (``r1flow.sharding``) and the ranks get unequal
shares — 8 and 4 of the first 12 rows — so the short rank runs a zero-weight padding micro-batch.

    python tests/dist_grpo_step.py WORK_DIR OUT_DIR [fsdp]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def main(work: Path, out: Path, fsdp: bool = False) -> None:
    from accelerate import Accelerator

    from r1flow.grpo.params import GRPOParams
    from r1flow.grpo.trainer import RolloutBatch, _Clock, _optimize, batch_logprobs, make_optimizer
    from r1flow.modeling import load_model

    accelerator = Accelerator(cpu=True)  # under `accelerate launch`: joins the gloo process group
    rank, world = accelerator.process_index, accelerator.num_processes
    torch.set_num_threads(1)
    model, _ = load_model(str(work / "model"))
    saved = torch.load(work / "batch.pt")
    params = GRPOParams(**saved["params"])
    rows = saved["advantages"].numel()
    mine = torch.arange(rows).tensor_split(world)[rank]  # whole groups: rows / world is a multiple of G
    if fsdp:
        mine = torch.arange(12) if world == 1 else (torch.arange(8), torch.arange(8, 12))[rank]
        if world > 1:
            from r1flow.sharding import shard

            shard(model)
    batch = RolloutBatch(**{k: saved[k] for k in ("prompt_ids", "prompt_mask", "completion_ids",
                                                  "completion_mask", "advantages", "old_logp")}).select(mine)
    optimizer, scheduler = make_optimizer(model, params)
    logp = batch_logprobs(model, batch, params.micro_batch_size, params.temperature)  # old log-probs, no grad
    model.train()
    stats = _optimize(model, batch, optimizer, scheduler, params, _Clock(), seed=0)
    from r1flow.sharding import full_state, is_sharded

    state = full_state(model)[0] if is_sharded(model) else {n: p.detach().clone() for n, p in model.named_parameters()}
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        torch.save({"params": {n: state[n] for n, _ in model.named_parameters()},
                    "world": world, "loss": stats["loss"], "grad_norm": stats["grad_norm"],
                    "logp": logp}, out / "params.pt")
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), fsdp=sys.argv[3:] == ["fsdp"])
