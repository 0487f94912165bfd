"""Pretraining the small "base models" of the CPU presets on the synthetic arithmetic corpus.

The paper starts from DeepSeek-V3-Base (§2.2); a laptop cannot, so tiny presets make their own
base: a byte-level BPE trained on the corpus (Qwen2 pre-tokenization, digits one per token), a
small Qwen2 model from ``ModelArch``, and a fixed number of next-token steps over whole documents
(``r1flow.data.arith.pretraining_corpus``: R1-Zero-template documents with deliberate bad habits,
plus some in the R1 template). A fixed step count and seed, not a time budget, keep the base the
same from run to run (base accuracy moves by a few points between seeds).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from r1flow.data.arith import CorpusMix, TaskParams, pretraining_corpus
from r1flow.modeling import ModelArch, build_model, train_tokenizer
from r1flow.precision import autocast_forwards
from r1flow.tracking import NullTracker, Tracker
from r1flow.train.sft import SFTParams, train_sft


class PretrainParams(BaseModel):
    """The pretraining corpus: its size, problem sizes and mixture of forms, and the tokenizer."""

    model_config = ConfigDict(extra="forbid")
    num_docs: int = Field(20000, gt=0, description="documents in the corpus")
    seed: int = Field(0, description="seeds problem draws and forms")
    vocab_size: int = Field(512, ge=300, le=65536, description="BPE vocabulary (incl. 256 bytes)")
    task: TaskParams = Field(default_factory=TaskParams, description="size of the problems")
    mix: CorpusMix = Field(default_factory=CorpusMix, description="fractions of document forms")


def build_corpus(params: PretrainParams) -> list[str]:
    """The pretraining documents (no EOS; the trainer appends it)."""
    return pretraining_corpus(params.num_docs, params.seed, params.mix, params.task)


def pretrain_base(
    arch: ModelArch,
    corpus_params: PretrainParams,
    sft_params: SFTParams,
    tokenizer=None,
    tracker: Tracker | None = None,
    dtype=None,
):
    """Build the corpus, train a tokenizer on it unless one is given, build a model from ``arch``
    (seeded by ``sft_params.seed``) and train it on whole documents — each forward in ``dtype``
    autocast when given (``r1flow.precision``). Returns (model, tokenizer), the tokenizer set up
    for batched generation (left padding)."""
    corpus = build_corpus(corpus_params)
    if tokenizer is None:
        tokenizer = train_tokenizer(corpus, corpus_params.vocab_size)
    model = autocast_forwards(build_model(arch, tokenizer, seed=sft_params.seed), dtype)
    examples = [{"prompt": "", "completion": doc} for doc in corpus]
    train_sft(model, tokenizer, examples, sft_params, tracker or NullTracker())
    tokenizer.padding_side = "left"
    return model, tokenizer
