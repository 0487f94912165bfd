"""Small Qwen2-architecture models and locally trained tokenizers (CPU presets), and loading.

Nothing here touches a model hub: tiny presets build a byte-level BPE from their own corpus and a
``Qwen2ForCausalLM`` from a config. The BPE is trained with Qwen2's own normalizer and
pre-tokenizer (NFC, Qwen2's split regex, ByteLevel without its own regex), because in
transformers 5.x ``AutoTokenizer`` on a ``qwen2`` folder rebuilds those from hard-coded values
and ignores ``tokenizer.json``'s; training with the same settings makes both loaders agree.
Qwen2's regex splits numbers into single digits, which arithmetic needs.

Real presets load hub ids (with a pinned revision) or paths; ``trust_remote_code`` stays off
unless a config turns it on explicitly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from pydantic import BaseModel, ConfigDict, Field

EOS = "<|endoftext|>"
QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


class ModelArch(BaseModel):
    """Shape of a small Qwen2 model built from scratch."""

    model_config = ConfigDict(extra="forbid")
    hidden_size: int = Field(128, gt=0, description="width of the residual stream")
    num_layers: int = Field(4, gt=0, description="decoder layers")
    num_heads: int = Field(4, gt=0, description="attention heads")
    num_kv_heads: int = Field(2, gt=0, description="key/value heads (GQA)")
    intermediate_size: int = Field(384, gt=0, description="MLP width")
    max_positions: int = Field(512, gt=0, description="longest sequence the model sees")
    tie_embeddings: bool = Field(True, description="share input and output embeddings")


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Train a byte-level BPE on ``texts`` with Qwen2's pre-tokenization; returns a fast tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return Qwen2Tokenizer(vocab=model["vocab"], merges=merges)


def build_model(arch: ModelArch, tokenizer, seed: int = 0):
    """A randomly initialised Qwen2ForCausalLM sized by ``arch`` for ``tokenizer``'s vocabulary."""
    import torch
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(qwen2_config(arch, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id))


def qwen2_config(arch: ModelArch, vocab_size: int, eos_id: int | None = None, pad_id: int | None = None):
    """The transformers config of a tiny model sized by ``arch``."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=arch.hidden_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_kv_heads,
        intermediate_size=arch.intermediate_size,
        max_position_embeddings=arch.max_positions,
        tie_word_embeddings=arch.tie_embeddings,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )


def save_model(model, tokenizer, path: str | os.PathLike) -> Path:
    """Save weights (safetensors), config and tokenizer into ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def load_model(path: str, *, revision: str | None = None, trust_remote_code: bool = False,
               dtype: str = "float32"):
    """Load (model, tokenizer) from a local folder or a hub id; fails clearly if a path is missing.

    The tokenizer is set up for batched generation (``r1flow.loading.load_tokenizer``): left
    padding, an eos and a pad token even where the checkpoint names none (Llama-style folders).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from r1flow.loading import load_tokenizer, source_kind

    if source_kind(path) == "local" and not Path(path).expanduser().exists():
        raise FileNotFoundError(f"model path does not exist: {path}")
    kwargs = dict(revision=revision, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), **kwargs)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
