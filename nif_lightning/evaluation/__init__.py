"""Evaluation the way the paper measured: IFEval checks, the Open LLM Leaderboard through
lm-eval, LLM-judge grades and win rates, and the side-by-side comparison table (`nif eval`)."""

from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
"""Shipped files: `mt_questions.jsonl` (MT-Bench format), `ifeval_prompts.jsonl`, and
`lm-eval-demo/` (stand-ins for the leaderboard tasks, `--include-path demo`)."""
