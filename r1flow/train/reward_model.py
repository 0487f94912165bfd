"""Reward models for non-reasoning prompts (paper §2.3.4) and a scorer the final RL stage uses.

The paper's final RL stage scores general (non-reasoning) prompts with reward models trained on
human preferences. Here a sequence classifier (one output: a scalar reward read at the last
token) is trained on (prompt, chosen, rejected) pairs with the Bradley–Terry loss

    L = −log σ(r(x, y_chosen) − r(x, y_rejected)),

averaged over the pairs of a batch; held-out pair accuracy (share of pairs with
r_chosen > r_rejected) is the quality measure. The paper judges helpfulness on the final summary
only: callers pass the user's prompt and the completion's summary (the text after ``</think>``).
The classifier starts from scratch (``build_reward_model``, tiny presets) or from a pretrained
causal LM with a new one-label head (``init_from_pretrained``); an existing hub reward model is
loaded as is (``load_reward_model``; ``trust_remote_code`` stays off unless asked).

Every reward model reads (prompt, response) with ITS OWN tokenizer: the chat template when it has
one (decoder RMs such as Skywork-Reward were trained on rendered conversations), else a text pair
with the tokenizer's own special tokens where it adds some (DeBERTa-style RMs read ``[CLS] p [SEP]
r [SEP]``), else ``prompt\\nresponse``. Batches are RIGHT-padded with the model's
``config.pad_token_id``: real tokens keep positions 0..n−1 (what models with absolute positions
need) and HF classifiers read the rightmost token that is not that pad id — so the pad id must be
set (a Llama tokenizer has none: the eos stands in) and be the one the batch is padded with.
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

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
    return -F.logsigmoid(r_chosen.float() - r_rejected.float()).mean()


def rm_text(tokenizer, prompt: str, response: str) -> str:
    """The text a reward model reads for (prompt, response) when it is not encoded as a pair."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return f"{prompt}\n{response}"


def build_reward_model(arch: ModelArch, tokenizer, seed: int = 0):
    """A randomly initialised ``Qwen2ForSequenceClassification`` (num_labels=1) sized by ``arch``."""
    from transformers import Qwen2ForSequenceClassification

    config = build_model(arch, tokenizer, seed).config
    config.num_labels = 1
    pad = tokenizer.pad_token_id
    config.pad_token_id = pad if pad is not None else tokenizer.eos_token_id
    torch.manual_seed(seed)
    return Qwen2ForSequenceClassification(config)


def init_from_pretrained(path: str, tokenizer, *, revision: str | None = None,
                         trust_remote_code: bool = False, seed: int = 0):
    """A pretrained causal LM as a one-label sequence classifier: its body's weights, a new reward
    head (the LM head is dropped) — how reward models start from the policy's base (§2.3.4)."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)  # the new head's initialisation
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, revision=revision, trust_remote_code=trust_remote_code, dtype=torch.float32)
    set_pad_id(model, tokenizer)
    return model


def check_classifier(config: dict[str, Any], source: str) -> None:
    """Refuse a checkpoint that is not a one-label sequence classifier: loaded as one, a causal LM
    gets a RANDOM reward head without any error — the RL stage would optimize noise."""
    archs = config.get("architectures") or []
    if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
        raise ValueError(f"{source}: a {', '.join(archs)}, not a sequence classifier "
                         "(AutoModelForSequenceClassification): its reward head would be random")
    labels = len(config.get("id2label") or {})  # a config without labels reads as 2 (HF's default)
    if archs and labels != 1:
        raise ValueError(f"{source}: a reward model has one output; this one has num_labels={labels}")


def load_reward_model(path: str, *, revision: str | None = None, trust_remote_code: bool = False,
                      dtype: torch.dtype | None = None):
    """(model, tokenizer) of a saved or hub reward model, weights in ``dtype`` (default fp32),
    its tokenizer fixed for batching (``r1flow.loading.load_tokenizer``) and its pad id set."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from r1flow.loading import load_tokenizer

    kw: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    check_classifier(AutoConfig.from_pretrained(path, **kw).to_dict(), path)
    tokenizer = load_tokenizer(path, **kw)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype or torch.float32, **kw)
    set_pad_id(model, tokenizer)
    return model, tokenizer


def set_pad_id(model, tokenizer) -> int:
    """The id batches are padded with: the model's ``pad_token_id``, else the tokenizer's pad (or
    eos), written into the config where the classifier looks it up."""
    config = model.config.get_text_config()
    pad = config.pad_token_id
    if pad is None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the reward model's tokenizer has neither a pad nor an eos token to pad with")
        config.pad_token_id = model.config.pad_token_id = pad
    return int(pad)


def right_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into ``(ids [B, T], mask [B, T])`` (see the module doc)."""
    width = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[row, :len(s)] = 1
    return ids, mask


def train_reward_model(tokenizer, arch: ModelArch | torch.nn.Module, pairs_train: list[dict[str, Any]],
                       pairs_eval: list[dict[str, Any]], params: RewardModelParams,
                       tracker: Tracker | None = None):
    """Train a reward model on preference pairs; returns ``(model, metrics)`` (model in eval mode).

    ``arch``: a ``ModelArch`` (a new classifier of that size) or a classifier to train in place
    (e.g. ``init_from_pretrained``), on its own device. ``metrics``: ``train_loss`` (mean of the
    last ``eval_every`` steps), ``eval_accuracy``, ``eval_margin`` (mean r_chosen − r_rejected) and
    ``eval_accuracy_<kind>`` when pairs carry a ``kind``.
    """
    if not pairs_train or not pairs_eval:
        raise ValueError("need at least one training and one evaluation pair")
    tracker = tracker or NullTracker()
    model = build_reward_model(arch, tokenizer, params.seed) if isinstance(arch, ModelArch) else arch
    pad_id = set_pad_id(model, tokenizer)
    device = next(model.parameters()).device
    chosen = _encode(tokenizer, pairs_train, "chosen", params.max_length)
    rejected = _encode(tokenizer, pairs_train, "rejected", params.max_length)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=params.lr,
                                  weight_decay=params.weight_decay)
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
        ids, mask = right_pad([chosen[i] for i in batch] + [rejected[i] for i in batch], pad_id)
        rewards = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0]  # [2B]
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
                       **evaluate_pairs(model, tokenizer, pairs_eval, params.max_length,
                                        params.eval_batch_size)}
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
    """Scores (prompt, response) pairs with a sequence-classification reward model, batched.

    ``path_or_model``: a local folder or hub id (``load_reward_model``; its own tokenizer), or a
    model object plus its ``tokenizer``. Scores do not depend on the batch a row is in.
    """

    def __init__(self, path_or_model, tokenizer=None, *, batch_size: int = 32, max_length: int = 512,
                 trust_remote_code: bool = False, revision: str | None = None) -> None:
        if isinstance(path_or_model, (str, bytes)) or hasattr(path_or_model, "__fspath__"):
            model, own = load_reward_model(str(path_or_model), revision=revision,
                                           trust_remote_code=trust_remote_code)
            tokenizer = tokenizer or own
        elif tokenizer is None:
            raise ValueError("a model object needs its tokenizer")
        else:
            model = path_or_model
        if model.config.num_labels != 1:
            raise ValueError("a reward model has one output; this one has "
                             f"num_labels={model.config.num_labels}")
        self.pad_id = set_pad_id(model, tokenizer)
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
                    ids, mask = right_pad(encoded[start:start + self.batch_size], self.pad_id)
                    logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                    scores += logits[:, 0].float().cpu().tolist()
        finally:
            self.model.train(was_training)
        return scores


def _encode(tokenizer, rows: list[dict[str, Any]], field: str, max_length: int) -> list[list[int]]:
    """Token ids of (prompt, row[field]) as the module doc says. Rendered text keeps its last
    ``max_length`` tokens (a decoder reads the end); a text pair is truncated by the tokenizer,
    which keeps its special tokens (an encoder reads its first, ``[CLS]``)."""
    if not getattr(tokenizer, "chat_template", None) and tokenizer.num_special_tokens_to_add(pair=True) > 0:
        return tokenizer([r["prompt"] for r in rows], [r[field] for r in rows], truncation="longest_first",
                         max_length=max_length)["input_ids"]
    texts = [rm_text(tokenizer, r["prompt"], r[field]) for r in rows]
    return [ids[-max_length:] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _lr_factor(step: int, params: RewardModelParams) -> float:
    """Linear warm-up to 1, then cosine decay to 0.1 at the last step."""
    if step < params.warmup_steps:
        return (step + 1) / params.warmup_steps
    progress = (step - params.warmup_steps) / max(1, params.steps - params.warmup_steps)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))
