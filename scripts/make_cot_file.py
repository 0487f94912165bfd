"""Write configs/data/arith_cot.jsonl: a long-CoT source file for cold-start curation.

Rows ``{question, answer, completion}`` with correct worked steps in the R1-Zero format, drawn
from the synthetic task with held-out problems excluded — the "dataset file" kind of cold-start
source (the ``micro`` preset uses it beside the R1-Zero samples)."""

from pathlib import Path

from r1flow.data.arith import generate_problems
from r1flow.data.io import write_jsonl
from r1flow.templates import r1_zero_completion

OUT = Path(__file__).resolve().parent.parent / "configs" / "data" / "arith_cot.jsonl"

if __name__ == "__main__":
    rows = [{"question": p.question, "answer": p.answer,
             "completion": r1_zero_completion(p.solution_steps, p.answer)}
            for p in generate_problems(200, seed=7, unique=True, prefix="cot")]
    write_jsonl(OUT, rows)
    print(f"wrote {len(rows)} rows to {OUT}")
