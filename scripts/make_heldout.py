"""Write the held-out arithmetic set once: ``r1flow/assets/heldout_arith.jsonl``.

The set is a pure function of ``HELDOUT_SEED``, ``HELDOUT_SIZE`` and ``HELDOUT_TASK`` in
``r1flow.data.arith``; its sha256 is pinned there as ``HELDOUT_SHA256`` and in
``r1flow/assets/README.md``. Run ``python scripts/make_heldout.py`` and update both digests
only if the task itself is meant to change (every earlier evaluation becomes incomparable).
"""

from __future__ import annotations

import hashlib

from r1flow.data.arith import HELDOUT_PATH, heldout_jsonl


def main() -> None:
    text = heldout_jsonl()
    HELDOUT_PATH.parent.mkdir(parents=True, exist_ok=True)
    HELDOUT_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {HELDOUT_PATH} ({text.count(chr(10))} problems) sha256 {hashlib.sha256(text.encode()).hexdigest()}")


if __name__ == "__main__":
    main()
