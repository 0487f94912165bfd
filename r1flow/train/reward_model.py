"""Reward models for non-reasoning prompts (paper §2.3.4) and a scorer the final RL stage uses.

The paper's final RL stage scores general (non-reasoning) prompts with reward models trained on
human preferences. Here a ``Qwen2ForSequenceClassification`` (one output: a scalar reward read at
the last token) is trained on (prompt, chosen, rejected) pairs with the Bradley–Terry loss

    L = −log σ(r(x, y_chosen) − r(x, y_rejected)),

averaged over the pairs of a batch; held-out pair accuracy (share of pairs with
r_chosen > r_rejected) is the quality measure. The paper judges helpfulness on the final summary
only: callers pass the user's prompt and the completion's summary (the text after ``</think>``).

``RewardModelScorer`` loads ANY ``AutoModelForSequenceClassification`` checkpoint (ours or a hub
reward model; ``trust_remote_code`` stays off unless asked) and formats (prompt, response) the
same way training did: the tokenizer's chat template when it has one, else ``prompt\\nresponse``.
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from r1flow.engine import left_pad
from r1flow.modeling import ModelArch, build_model
from r1flow.tracking import NullTracker, Tracker


class RewardModelParams(BaseModel):
    """Training settings for a Bradley–Terry reward model."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(400, gt=0, description="optimizer steps")
    batch_size: int = Field(32, gt=0, description="preference pairs per step")
    lr: float = Field(3e-3, gt=0, le=1.0, description="peak AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(20, ge=0, description="linear warm-up steps, then cosine decay to 10%")
    grad_clip: float = Field(1.0, gt=0, description="max gradient norm")
    max_length: int = Field(128, gt=0, description="tokens kept per prompt+response (the end is kept)")
    eval_every: int = Field(50, gt=0, description="steps between held-out evaluations")
    eval_batch_size: int = Field(64, gt=0, description="pairs per held-out scoring batch")
    seed: int = Field(0, ge=0, description="seed for initialisation and batch order")


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Mean −log σ(r_chosen − r_rejected) over pairs; inputs [B]. Equal rewards give log 2."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def rm_text(tokenizer, prompt: str, response: str) -> str:
    """The text a reward model reads for (prompt, response)."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return f"{prompt}\n{response}"


def build_reward_model(arch: ModelArch, tokenizer, seed: int = 0):
    """A randomly initialised ``Qwen2ForSequenceClassification`` (num_labels=1) sized by ``arch``."""
    from transformers import Qwen2ForSequenceClassification

    config = build_model(arch, tokenizer, seed).config
    config.num_labels = 1
    config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    torch.manual_seed(seed)
    return Qwen2ForSequenceClassification(config)


def train_reward_model(tokenizer, arch: ModelArch, pairs_train: list[dict[str, Any]],
                       pairs_eval: list[dict[str, Any]], params: RewardModelParams,
                       tracker: Tracker | None = None):
    """Train a reward model on preference pairs; returns ``(model, metrics)`` (model in eval mode).

    ``metrics``: ``train_loss`` (mean of the last ``eval_every`` steps), ``eval_accuracy``,
    ``eval_margin`` (mean r_chosen − r_rejected) and ``eval_accuracy_<kind>`` when pairs carry a
    ``kind``.
    """
    if not pairs_train or not pairs_eval:
        raise ValueError("need at least one training and one evaluation pair")
    tracker = tracker or NullTracker()
    model = build_reward_model(arch, tokenizer, params.seed)
    pad_id = model.config.pad_token_id
    chosen = _encode(tokenizer, pairs_train, "chosen", params.max_length)
    rejected = _encode(tokenizer, pairs_train, "rejected", params.max_length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, params))
    rng = random.Random(params.seed)
    order: list[int] = []
    losses: list[float] = []
    metrics: dict[str, float] = {}
    model.train()
    for step in range(1, params.steps + 1):
        if len(order) < params.batch_size:
            fresh = list(range(len(pairs_train)))
            rng.shuffle(fresh)
            order += fresh
        batch, order = order[: params.batch_size], order[params.batch_size:]
        ids, mask = left_pad([chosen[i] for i in batch] + [rejected[i] for i in batch], pad_id)
        rewards = model(input_ids=ids, attention_mask=mask).logits[:, 0]  # [2B]
        loss = bradley_terry_loss(rewards[: len(batch)], rewards[len(batch):])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % params.eval_every == 0 or step == params.steps:
            recent = losses[-params.eval_every:]
            metrics = {"train_loss": sum(recent) / len(recent), "lr": scheduler.get_last_lr()[0],
                       **evaluate_pairs(model, tokenizer, pairs_eval, params.max_length, params.eval_batch_size)}
            model.train()
            tracker.log_metrics(metrics, step)
            tracker.progress(step, params.steps, phase="reward model", eval_accuracy=metrics["eval_accuracy"])
    model.eval()
    return model, metrics


def evaluate_pairs(model, tokenizer, pairs: list[dict[str, Any]], max_length: int = 128,
                   batch_size: int = 64) -> dict[str, float]:
    """Held-out pair accuracy and mean margin (overall, and per ``kind`` when pairs have one)."""
    scorer = RewardModelScorer(model, tokenizer, batch_size=batch_size, max_length=max_length)
    prompts = [p["prompt"] for p in pairs]
    margins = [c - r for c, r in zip(scorer(prompts, [p["chosen"] for p in pairs]),
                                     scorer(prompts, [p["rejected"] for p in pairs]))]
    out = {"eval_accuracy": sum(m > 0 for m in margins) / len(margins),
           "eval_margin": sum(margins) / len(margins)}
    for kind in sorted({p["kind"] for p in pairs if "kind" in p}):
        kind_margins = [m for m, p in zip(margins, pairs) if p.get("kind") == kind]
        out[f"eval_accuracy_{kind}"] = sum(m > 0 for m in kind_margins) / len(kind_margins)
    return out


class RewardModelScorer:
    """Scores (prompt, response) pairs with a sequence-classification reward model.

    ``path_or_model``: a local folder or hub id (loaded with ``AutoModelForSequenceClassification``;
    ``tokenizer`` then defaults to the folder's), or a model object plus its ``tokenizer``.
    """

    def __init__(self, path_or_model, tokenizer=None, *, batch_size: int = 32, max_length: int = 512,
                 trust_remote_code: bool = False, revision: str | None = None) -> None:
        if isinstance(path_or_model, (str, bytes)) or hasattr(path_or_model, "__fspath__"):
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            path = str(path_or_model)
            kw = dict(trust_remote_code=trust_remote_code, revision=revision)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(path, **kw)
            model = AutoModelForSequenceClassification.from_pretrained(path, **kw)
        elif tokenizer is None:
            raise ValueError("a model object needs its tokenizer")
        else:
            model = path_or_model
        if model.config.num_labels != 1:
            raise ValueError(f"a reward model has one output; this one has num_labels={model.config.num_labels}")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.pad_id
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_length = batch_size, max_length

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        rows = [{"prompt": p, "response": c} for p, c in zip(prompts, completions)]
        encoded = _encode(self.tokenizer, rows, "response", self.max_length)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        scores: list[float] = []
        try:
            with torch.inference_mode():
                for start in range(0, len(encoded), self.batch_size):
                    ids, mask = left_pad(encoded[start:start + self.batch_size], self.pad_id)
                    logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                    scores += logits[:, 0].float().cpu().tolist()
        finally:
            self.model.train(was_training)
        return scores


def _encode(tokenizer, rows: list[dict[str, Any]], field: str, max_length: int) -> list[list[int]]:
    """Token ids of ``rm_text(prompt, row[field])``, keeping the last ``max_length`` tokens."""
    texts = [rm_text(tokenizer, r["prompt"], r[field]) for r in rows]
    return [ids[-max_length:] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _lr_factor(step: int, params: RewardModelParams) -> float:
    """Linear warm-up to 1, then cosine decay to 0.1 at the last step."""
    if step < params.warmup_steps:
        return (step + 1) / params.warmup_steps
    progress = (step - params.warmup_steps) / max(1, params.steps - params.warmup_steps)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))
