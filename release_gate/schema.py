"""The run directory and ``decision.json``: one definition the gate writes and every reader imports.

The report, ``summary.md``/``junit.xml``, the vLLM resolver and ``serve-args`` read what the gate
wrote; file names, arm roles, outcomes, statuses, the schema version and the ranking of variants are
declared here once, so a schema change cannot silently break a reader (docs/run-directory.md); the
document itself is the typed model of :mod:`.document`.
"""

from __future__ import annotations

from enum import StrEnum

#: Version of ``decision.json``; readers refuse any other.
SCHEMA_VERSION = 2

DECISION_FILE = "decision.json"
SUMMARY_FILE = "summary.md"
JUNIT_FILE = "junit.xml"
REPORT_FILE = "report.html"
INSPECT_FILE = "inspect.json"
RUN_CONFIG_FILE = "config.yaml"
TRACKING_FILE = "tracking.json"
RUN_MARKER = ".release-gate-run"
RUN_LOG_FILE = "run.log"
VARIANTS_DIR = "variants"
ITEMS_DIR = "items"
PROMOTED_DIR = "promoted"
#: Per-arm results and samples in lm-eval's own layout (``lm_eval/<arm>/results_<date>.json``).
LM_EVAL_DIR = "lm_eval"
MODEL_CARD_FILE = "README.md"
#: The per-variant record of a spectral edit (beside the adapter files).
SIDECAR_FILE = "spectral_edit.json"

#: Arm names with a fixed meaning.
BASE = "base"
BASELINE = "baseline"
#: The reference arm standing for all random controls together (criterion 2 with ``reference: mean``).
CONTROL_MEAN = "random_index"
#: The policy kind of the random controls, and the ``task`` of the weighted target reward.
CONTROL_POLICY = "random_index"
REWARD = "reward"


class Role(StrEnum):
    """What an arm is in the decision: the base model, the input adapter, a candidate, or a random control."""

    BASE = "base"
    BASELINE = "baseline"
    VARIANT = "variant"
    CONTROL = "control"


class TaskRole(StrEnum):
    """A target is weighted into the reward; a guard has a drop budget."""

    TARGET = "target"
    GUARD = "guard"


class Standing(StrEnum):
    """How an arm or a criterion came out, for the report's marks and colours (a CSS class suffix)."""

    WINNER = "winner"
    PASS = "pass"
    POINT = "point"
    FAIL = "fail"
    CONTROL = "control"


class Outcome(StrEnum):
    PROMOTE = "PROMOTE"
    REJECT = "REJECT"
    INCONCLUSIVE = "INCONCLUSIVE"


#: Exit codes by outcome (SPEC §7).
EXIT_CODES = {Outcome.PROMOTE: 0, Outcome.REJECT: 10, Outcome.INCONCLUSIVE: 11}


class Status(StrEnum):
    """Where a variant's evaluation ended (see :mod:`release_gate.gate.looks`)."""

    EVALUATING = "evaluating"
    PASSED = "passed"
    FUTILE = "futile"
    COLLAPSED = "collapsed"
    OUTRANKED = "outranked"
    FINAL = "final"


def rank_key(reward: float, worst_guard_drop: float, arm: str) -> tuple[float, float, str]:
    """The gate's order of variants: highest reward first, ties to the smaller guard drop, then the name."""
    return (-reward, worst_guard_drop, arm)
