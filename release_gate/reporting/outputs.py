"""The run's CI-facing outputs (SPEC §8): ``decision.json``, ``summary.md``, ``junit.xml``, ``promoted/``.

Everything here renders from the decision *document* (the JSON written to
``decision.json``), so ``release-gate report`` and a pipeline reading the file
see exactly what the run decided. Files are written atomically; ``promoted/``
exists only beside a PROMOTE decision whose sha256 matches it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import yaml

from ..assets import public_model_id
from ..document import DecisionDocument, VerdictRecord
from ..errors import BadInput
from ..files import atomic_directory, remove_directory, write_json_atomic, write_text_atomic
from ..gate.criteria import pts
from ..schema import (
    BASELINE,
    DECISION_FILE,
    JUNIT_FILE,
    MODEL_CARD_FILE,
    PROMOTED_DIR,
    SIDECAR_FILE,
    SUMMARY_FILE,
    Outcome,
    Standing,
)
from ..surgery.adapter import CONFIG_FILE, SAFETENSORS_FILE

#: What ``promoted/`` holds besides the model card: the adapter (what the resolver hashes) and its edit record.
PROMOTED_FILES = (CONFIG_FILE, SAFETENSORS_FILE, SIDECAR_FILE)
#: A variant's mark in ``summary.md`` by its standing (the promoted one is a passing one).
MARKS = {Standing.WINNER: "✅", Standing.PASS: "✅", Standing.POINT: "➖", Standing.FAIL: "❌"}


def evidence_sentence(document: DecisionDocument, verdict: VerdictRecord) -> str:
    """What the promotion rests on: the exact test at its level, or (point mode) the point estimates only."""
    if document.point:
        return ("Promoted on point estimates (`gate.mode: point`, the paper's rule): every criterion above holds "
                f"on the observed means over {_items(verdict)}. No significance test was required and no "
                "confidence is claimed; `gate.mode: statistical` (the default) would also require one.")
    holm = " (Holm across the variants)" if document.gate.holm else ""
    return (f"p = {verdict.p_value:.3g} (the largest of its criteria's exact p-values) ≤ {verdict.boundary:.3g}, "
            f"its level at look {verdict.look}{holm}.")


def _items(verdict: VerdictRecord) -> str:
    return ", ".join(f"{n} {task} items" for task, n in verdict.n.items())


def summary_markdown(document: DecisionDocument) -> str:
    """A short Markdown verdict for PR comments and CI job summaries (point mode: no confidence columns)."""
    promoted = document.promoted
    gate = document.gate
    point = document.point
    lines = [f"## release-gate: **{document.outcome}**" + (f" `{promoted.arm}`" if promoted else ""), ""]
    lines += [f"- {reason}" for reason in document.reasons]
    design = document.design
    evaluation = (f"sequential in {len(design.looks)} looks ({design.spending} spending)" if design.sequential
                  else "fixed (every item at once)")
    judged = "point estimates only (the paper's rule), no tests" if point else "exact tests"
    lines += ["", f"Gate: mode `{gate.mode}`, α = {gate.alpha}, min gain {pts(gate.min_gain)} pts, "
              f"Holm {'on' if gate.holm else 'off'}, control reference: {gate.control_reference}, "
              f"evaluation {evaluation}; {judged}.", ""]
    tasks = document.tasks
    p_column = "" if point else " p ≤ level |"
    lines += ["| variant | passed |" + p_column + " reward vs baseline | " +
              " | ".join(f"{t} ({v.role}, n ≤ {v.n})" for t, v in tasks.items()) + " |",
              "|---|---|" + ("" if point else "---|") + "---|" + "---|" * len(tasks)]
    deltas = {(c.arm, c.task): c for c in document.comparisons if c.reference == BASELINE}
    for arm, verdict in document.variants.items():
        cells = [pts(deltas[(arm, t)].delta) + ("" if point else f" [{pts(deltas[(arm, t)].lcb)}]") for t in tasks]
        level = f"{verdict.boundary:.3g}" if verdict.boundary is not None else "—"
        p_cell = "" if point else f" {verdict.p_value:.3g} ≤ {level}? |"
        lines.append(f"| `{arm}` | {MARKS[document.standing(arm)]} {verdict.status} |{p_cell} {pts(verdict.reward)} | "
                     + " | ".join(cells) + " |")
    legend = ("Δ in points vs the unedited adapter (point estimates). ✅ passes on point estimates, ❌ fails."
              if point else "Δ in points vs the unedited adapter, [one-sided lower confidence bound]. "
              "✅ passes, ➖ passes on point estimates only, ❌ fails.")
    lines += ["", legend, ""]
    lines += [f"> ⚠ {w}" for w in document.warnings]
    return "\n".join(lines).rstrip() + "\n"


def junit_xml(document: DecisionDocument) -> str:
    """One test case per criterion per variant; a failed criterion is a JUnit failure with its reason.

    A criterion fails as the gate's mode judges it: with confidence, or on its point estimate in point mode.
    """
    cases = []
    failures = 0
    for arm, verdict in document.variants.items():
        for criterion in verdict.criteria:
            name = quoteattr(f"{arm}: {criterion.id}")
            body = ""
            if not criterion.held(document.point):
                failures += 1
                text = criterion.text
                body = f"<failure message={quoteattr(text)}>{escape(text)}</failure>"
            cases.append(f'    <testcase classname={quoteattr("release-gate." + arm)} name={name} time="0">'
                         f"{body}</testcase>")
    header = (f'<testsuite name="release-gate" tests="{len(cases)}" failures="{failures}" errors="0" '
              f'skipped="0">')
    outcome = f'    <properties><property name="outcome" value={quoteattr(document.outcome)}/></properties>'
    return "\n".join(['<?xml version="1.0" encoding="UTF-8"?>', "<testsuites>", header, outcome, *cases,
                      "</testsuite>", "</testsuites>"]) + "\n"


def model_card(document: DecisionDocument) -> str:
    """The promoted adapter's README as a Hub/PEFT model card: front matter, then the evidence in words.

    The front matter (``library_name: peft``, ``base_model``, tags, and the gate's scores as
    ``model-index`` results) is what the Hub and PEFT read; no local path appears anywhere.
    """
    promoted = document.promoted
    if promoted is None:
        raise ValueError(f"model card: the decision is {document.outcome}, not PROMOTE")
    arm = promoted.arm
    provenance = document.provenance
    verdict = document.variants[arm]
    scores = document.arms[arm].scores
    policy = (document.arms[arm].policy or {}).get("kind", arm)
    front = {
        "library_name": "peft", "base_model": public_model_id(document.config["base_model"]),
        "tags": ["release-gate", "spectral-surgery", "lora", policy],
        "model-index": [{"name": arm, "results": [
            {"task": {"type": "text-generation", "name": task},
             "dataset": {"name": task, "type": task},
             "metrics": [{"type": spec.metric.split(",")[0], "name": f"{spec.metric} ({spec.role}, "
                          f"n={scores[task].n})", "value": round(scores[task].mean, 6), "verified": False}]}
            for task, spec in document.tasks.items()]}],
    }
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
        f"# {arm} — promoted by release-gate", "",
        f"A Spectral Surgery refinement (policy `{policy}`) of a LoRA adapter (sha256 "
        f"`{provenance.adapter_sha256}`) for base model `{front['base_model']}`.",
        f"Adapter content sha256: `{promoted.sha256}`.", "",
        "## Why it was promoted", "",
        *[f"- {c.text}" for c in verdict.criteria], "",
        evidence_sentence(document, verdict), "",
        "## Provenance", "",
        f"- calibration data sha256: `{provenance.calibration_sha256}`",
        f"- base model config sha256: `{provenance.base_config_sha256}`",
        f"- release-gate {provenance.release_gate}, started {provenance.started}",
        "- the edit itself: `spectral_edit.json` (per-module σ before/after and α)", "",
        "Load it like any PEFT LoRA adapter (`PeftModel.from_pretrained`, or vLLM `--lora-modules`).",
    ]
    return "\n".join(lines) + "\n"


def promote(run_dir: Path, variant_dir: Path, document: DecisionDocument, signing_key: Path | None = None) -> Path:
    """Write ``promoted/`` atomically: a temp dir filled, signed when a key is given, fsynced, then one rename.

    It holds the adapter, its edit record, the model card and the decision, and the signature covers all of
    them, so no file of a signed release can change without the serving side noticing.
    """
    target = Path(run_dir) / PROMOTED_DIR
    _refuse_inputs(target, document)
    with atomic_directory(target) as tmp:
        for name in PROMOTED_FILES:
            if (Path(variant_dir) / name).is_file():
                shutil.copy2(Path(variant_dir) / name, tmp / name)
        (tmp / MODEL_CARD_FILE).write_text(model_card(document), encoding="utf-8")
        write_json_atomic(tmp / DECISION_FILE, document.to_json())
        if signing_key is not None:  # model-signing takes ~1 s to import: only when signing
            from ..integrations.signing import sign_directory

            sign_directory(tmp, signing_key)
    return target


def withdraw(run_dir: Path, document: DecisionDocument) -> None:
    """Remove a ``promoted/`` left by an earlier decision (it vanishes at once), never an input of the run."""
    target = Path(run_dir) / PROMOTED_DIR
    _refuse_inputs(target, document)
    remove_directory(target)


def _refuse_inputs(target: Path, document: DecisionDocument) -> None:
    """BadInput when ``target`` is, holds, or lies inside a file or folder the run's config names as input."""
    config = document.config
    for source in filter(None, (config.get("adapter"), (config.get("calibration") or {}).get("file"))):
        src, out = Path(source).resolve(), Path(target).resolve()
        if src == out or out in src.parents or src in out.parents:
            raise BadInput(f"{target}: the run's input {source} is there; release-gate never replaces or removes it")


def write_outputs(run_dir: Path, document: DecisionDocument, variant_dirs: dict[str, Path],
                  signing_key: Path | None = None) -> None:
    """All CI outputs of a finished run; ``promoted/`` signed with ``signing_key`` when one is given.

    Order matters to anyone watching the directory (e.g. the vLLM resolver):
    on PROMOTE the adapter lands before the decision that vouches for it; on
    any other outcome the decision lands first and the stale adapter goes after.
    """
    run_dir = Path(run_dir)
    if document.promoted is not None:
        promote(run_dir, variant_dirs[document.promoted.arm], document, signing_key)
    write_json_atomic(run_dir / DECISION_FILE, document.to_json())
    if document.outcome != Outcome.PROMOTE:
        withdraw(run_dir, document)
    write_text_atomic(run_dir / SUMMARY_FILE, summary_markdown(document))
    write_text_atomic(run_dir / JUNIT_FILE, junit_xml(document))
