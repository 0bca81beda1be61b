"""Greedy few-shot accuracy of one causal LM on 30 short fact and arithmetic questions.

    python bench/fewshot_facts.py [MODEL ...]     # default: bundled:gemma3-270m

MODEL is a ``bundled:`` name (converted into the user cache as the service does) or a local
transformers folder, e.g. one written by an older converter. Each question is asked as a raw
continuation of a fixed three-example prompt ("Q: ...\\nA: ...\\n\\n"), encoded the way a raw
completion is (``tokenizer(prompt)``: the tokenizer's own BOS/EOS policy), decoded greedily for
at most 8 tokens; the first line of the continuation is the answer, graded by normalised exact
match. This is the check that found the converted Gemma's missing BOS (docs/evaluation.md,
"Bundled Gemma conversion").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ensemble_core.answer_extraction import normalize_text  # noqa: E402
from ensemble_core.bundled import resolve_model_path  # noqa: E402

SHOTS = (
    ("What is the capital of Italy?", "Rome"),
    ("What is 3 + 4?", "7"),
    ("What is the opposite of big?", "small"),
)

QUESTIONS = (
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Spain?", "Madrid"),
    ("What is the capital of Russia?", "Moscow"),
    ("What is the capital of Egypt?", "Cairo"),
    ("What is the capital of Canada?", "Ottawa"),
    ("What is the opposite of hot?", "cold"),
    ("What is the opposite of up?", "down"),
    ("What is the opposite of day?", "night"),
    ("What is the opposite of open?", "closed"),
    ("What color is the sky on a clear day?", "blue"),
    ("How many legs does a spider have?", "8"),
    ("How many days are in a week?", "7"),
    ("Which planet do we live on?", "Earth"),
    ("What is 2 + 2?", "4"),
    ("What is 5 + 3?", "8"),
    ("What is 10 - 4?", "6"),
    ("What is 6 + 6?", "12"),
    ("What is 9 - 5?", "4"),
    ("What is 2 * 3?", "6"),
    ("What is 7 + 2?", "9"),
    ("What is 10 + 10?", "20"),
    ("What is 4 * 2?", "8"),
    ("What is 8 - 3?", "5"),
    ("What is 1 + 1?", "2"),
    ("What is 3 * 3?", "9"),
    ("What is 15 - 5?", "10"),
    ("What is 100 + 1?", "101"),
    ("What is 5 * 5?", "25"),
)


def fewshot_prompt(question: str) -> str:
    shots = "".join(f"Q: {q}\nA: {a}\n\n" for q, a in SHOTS)
    return f"{shots}Q: {question}\nA:"


def first_line(continuation: str) -> str:
    return continuation.strip().split("\n", 1)[0].strip()


def run(model_path: str, max_new_tokens: int = 8) -> tuple[int, float, list[tuple[str, str, str]]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = str(resolve_model_path(model_path))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    started = time.perf_counter()
    right, rows = 0, []
    for question, answer in QUESTIONS:
        ids = tokenizer(fewshot_prompt(question), return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(
                ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        said = first_line(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
        right += normalize_text(said) == normalize_text(answer)
        rows.append((question, answer, said))
    return right, time.perf_counter() - started, rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="*", default=["bundled:gemma3-270m"])
    parser.add_argument("--show", action="store_true", help="print every answer")
    args = parser.parse_args()
    for model in args.models:
        right, seconds, rows = run(model)
        if args.show:
            for question, answer, said in rows:
                print(
                    f"  {'ok ' if normalize_text(said) == normalize_text(answer) else 'NO '}{question!r} -> {said!r} ({answer})"
                )
        print(f"{model}: {right}/{len(QUESTIONS)} = {right / len(QUESTIONS):.2f} ({seconds:.1f} s)")


if __name__ == "__main__":
    main()
