"""A synthetic NON-reasoning task with a learnable preference (paper §2.3.4, CPU presets).

The paper's final RL stage mixes reasoning prompts (rule rewards) with general prompts scored by
reward models that capture human preferences. At laptop scale the "general" task is: reply
politely to a short request. A good reply is what ``is_good_reply`` checks, and it is the one
property both the reward model learns from preference pairs and the final-RL policy should
learn to produce:

1. it names the request's topic word (on topic),
2. it contains a polite marker ("thank", "happy to help", "glad", "please"),
3. it has no rude marker and no word three or more times (no "thank you thank you ...").

Rejected replies are off-topic (a polite reply about ANOTHER topic: only rule 1 broken, so a
reward model must compare the reply with the prompt), rude, or repetitive. Texts are short and a
good reply ends with its topic word: with a closing sentence after the topic, a 0.45M-parameter
model stayed at chance on off-topic pairs for 400 steps; ending on the topic, a 0.12M one ranks
them right ~85% of the time after 200 steps (batch 32, lr 3e-3). ``nonreasoning_rows`` is the fixed SFT file (``assets/nonreasoning.jsonl``,
rows ``{"id", "prompt", "response"}``); its prompts are the final-RL general prompts.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

NONREASONING_PATH = Path(__file__).resolve().parent.parent / "assets" / "nonreasoning.jsonl"
NONREASONING_SEED = 20250120
NONREASONING_SIZE = 300
PROMPT_PREFIX = "Reply politely: "

TOPICS = (
    "garden", "invoice", "meeting", "printer", "holiday", "package", "library", "recipe",
    "bicycle", "concert", "laptop", "kitchen", "ticket", "museum", "letter", "project",
    "camera", "window", "doctor", "lesson", "market", "parcel", "garage", "birthday",
)
REQUESTS = (
    "Can you help me with my {t}?",
    "I have a question about the {t}.",
    "Please tell me about the {t}.",
    "My {t} is not working today.",
    "Could you check the {t} for me?",
    "What should I do about the {t}?",
)
OPENERS = ("Hello!", "Hi there!", "Good day!", "Greetings!")
POLITE_BODIES = (
    "Thank you for asking about the {t}.",
    "Thanks for your message about the {t}.",
    "I am happy to help with the {t}.",
    "I am glad you asked about the {t}.",
)
RUDE_BODIES = (
    "Stop asking me about the {t}. Go away.",
    "The {t} is your problem, not mine. Leave me alone.",
    "Nobody cares about your {t}. Stop it.",
)
POLITE_MARKERS = ("thank", "happy to help", "glad", "please")
RUDE_MARKERS = ("go away", "not mine", "leave me alone", "nobody cares", "stop asking", "stop it")


def topic_of(prompt: str) -> str | None:
    """The topic word of a request prompt (the first known topic it names)."""
    words = re.findall(r"[a-z]+", prompt.lower())
    return next((w for w in words if w in TOPICS), None)


def is_good_reply(prompt: str, response: str) -> bool:
    """The preferred property: on topic, polite, not rude, not repetitive."""
    topic, text = topic_of(prompt), response.lower()
    words = re.findall(r"[a-z]+", text)
    on_topic = topic is not None and topic in words
    repetitive = bool(words) and max(words.count(w) for w in set(words)) >= 3
    return (on_topic and any(m in text for m in POLITE_MARKERS)
            and not any(m in text for m in RUDE_MARKERS) and not repetitive)


def make_prompt(rng: random.Random, topic: str) -> str:
    return PROMPT_PREFIX + rng.choice(REQUESTS).format(t=topic)


def good_reply(rng: random.Random, topic: str) -> str:
    return f"{rng.choice(OPENERS)} {rng.choice(POLITE_BODIES).format(t=topic)}"


def bad_reply(rng: random.Random, topic: str, kind: str) -> str:
    """A reply breaking one rule: ``off_topic``, ``rude`` or ``repetitive``."""
    if kind == "off_topic":
        return good_reply(rng, rng.choice([t for t in TOPICS if t != topic]))
    if kind == "rude":
        return rng.choice(RUDE_BODIES).format(t=topic)
    if kind == "repetitive":
        word = rng.choice(["thank", "you", "the", topic])
        return f"{rng.choice(OPENERS)} " + " ".join([word] * rng.randint(4, 8)) + "."
    raise ValueError(f"unknown bad reply kind {kind!r}")


BAD_KINDS = ("off_topic", "rude", "repetitive")


def preference_pairs(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` rows ``{"prompt", "chosen", "rejected", "kind"}``; ``kind`` (the rule the rejected reply
    breaks) cycles through BAD_KINDS."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = rng.choice(TOPICS)
        rows.append({"prompt": make_prompt(rng, topic), "chosen": good_reply(rng, topic),
                     "rejected": bad_reply(rng, topic, BAD_KINDS[i % len(BAD_KINDS)]),
                     "kind": BAD_KINDS[i % len(BAD_KINDS)]})
    return rows


def nonreasoning_rows(n: int = NONREASONING_SIZE, seed: int = NONREASONING_SEED) -> list[dict[str, str]]:
    """Rows ``{"id", "prompt", "response"}`` of polite on-topic replies (the SFT file's content)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        rows.append({"id": f"nonreasoning-{i:04d}", "prompt": make_prompt(rng, topic),
                     "response": good_reply(rng, topic)})
    return rows


def load_nonreasoning(path: str | Path = NONREASONING_PATH) -> list[dict[str, str]]:
    """Read the fixed non-reasoning file (validated: every row has id, prompt, response)."""
    from r1flow.data.io import read_jsonl

    return read_jsonl(path, {"id": str, "prompt": str, "response": str})
