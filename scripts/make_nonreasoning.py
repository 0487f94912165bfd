"""Write the fixed non-reasoning SFT file ``r1flow/assets/nonreasoning.jsonl``.

The file is a pure function of ``r1flow.data.preferences.nonreasoning_rows()`` (fixed seed and
size); ``tests/test_reward_model.py`` checks the committed file still equals it.
Run: ``python scripts/make_nonreasoning.py``.
"""

from __future__ import annotations

from r1flow.data.io import write_jsonl
from r1flow.data.preferences import NONREASONING_PATH, nonreasoning_rows

if __name__ == "__main__":
    path = write_jsonl(NONREASONING_PATH, nonreasoning_rows())
    print(f"wrote {path}")
