"""The run's CI-facing outputs (SPEC §8): ``decision.json``, ``summary.md``, ``junit.xml``, ``promoted/``.

Everything here renders from the decision *document* (the JSON written to
``decision.json``), so ``release-gate report`` and a pipeline reading the file
see exactly what the run decided. Files are written atomically; ``promoted/``
exists only beside a PROMOTE decision whose sha256 matches it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import yaml

from ..assets import HUB_IDS
from ..files import atomic_directory, read_json, remove_directory, write_json_atomic, write_text_atomic
from ..schema import (
    DECISION_FILE,
    JUNIT_FILE,
    MODEL_CARD_FILE,
    PROMOTED_DIR,
    SIDECAR_FILE,
    SUMMARY_FILE,
    Outcome,
)
from ..surgery.adapter import CONFIG_FILE, SAFETENSORS_FILE
from .criteria import pts

#: What ``promoted/`` holds besides the model card: the adapter (what the resolver hashes) and its edit record.
PROMOTED_FILES = (CONFIG_FILE, SAFETENSORS_FILE, SIDECAR_FILE)


def summary_markdown(document: dict[str, Any]) -> str:
    """A short Markdown verdict for PR comments and CI job summaries."""
    outcome = document["outcome"]
    promoted = document.get("promoted")
    gate = document["gate"]
    lines = [f"## release-gate: **{outcome}**" + (f" `{promoted['arm']}`" if promoted else ""), ""]
    lines += [f"- {reason}" for reason in document["reasons"]]
    design = document["design"]
    evaluation = (f"sequential in {len(design['looks'])} looks ({design['spending']} spending)" if design["sequential"]
                  else "fixed (every item at once)")
    lines += ["", f"Gate: mode `{gate['mode']}`, α = {gate['alpha']}, min gain {pts(gate['min_gain'])} pts, "
              f"Holm {'on' if gate['holm'] else 'off'}, control reference: {gate['control_reference']}, "
              f"evaluation {evaluation}; exact tests.", ""]
    tasks = document["tasks"]
    lines += ["| variant | passed | p ≤ level | reward vs baseline | " +
              " | ".join(f"{t} ({v['role']}, n ≤ {v['n']})" for t, v in tasks.items()) + " |",
              "|---|---|---|---|" + "---|" * len(tasks)]
    deltas = {(c["arm"], c["task"]): c for c in document["comparisons"] if c["reference"] == "baseline"}
    for arm, verdict in document["variants"].items():
        mark = "✅" if verdict["passed"] else ("➖" if verdict["passed_point"] else "❌")
        cells = [f"{pts(deltas[(arm, t)]['delta'])} [{pts(deltas[(arm, t)]['lcb'])}]" for t in tasks]
        level = f"{verdict['boundary']:.3g}" if verdict["boundary"] is not None else "—"
        lines.append(f"| `{arm}` | {mark} {verdict['status']} | {verdict['p_value']:.3g} ≤ {level}? | "
                     f"{pts(verdict['reward'])} | " + " | ".join(cells) + " |")
    lines += ["", "Δ in points vs the unedited adapter, [one-sided lower confidence bound]. "
              "✅ passes, ➖ passes on point estimates only, ❌ fails.", ""]
    lines += [f"> ⚠ {w}" for w in document.get("warnings", [])]
    return "\n".join(lines).rstrip() + "\n"


def junit_xml(document: dict[str, Any]) -> str:
    """One test case per criterion per variant; a failed criterion is a JUnit failure with its reason."""
    cases = []
    failures = 0
    for arm, verdict in document["variants"].items():
        for criterion in verdict["criteria"]:
            name = quoteattr(f"{arm}: {criterion['id']}")
            body = ""
            if not criterion["passed"]:
                failures += 1
                body = f"<failure message={quoteattr(criterion['text'])}>{escape(criterion['text'])}</failure>"
            cases.append(f'    <testcase classname={quoteattr("release-gate." + arm)} name={name} time="0">'
                         f"{body}</testcase>")
    header = (f'<testsuite name="release-gate" tests="{len(cases)}" failures="{failures}" errors="0" '
              f'skipped="0">')
    outcome = f'    <properties><property name="outcome" value={quoteattr(document["outcome"])}/></properties>'
    return "\n".join(['<?xml version="1.0" encoding="UTF-8"?>', "<testsuites>", header, outcome, *cases,
                      "</testsuite>", "</testsuites>"]) + "\n"


def model_card(document: dict[str, Any]) -> str:
    """The promoted adapter's README as a Hub/PEFT model card: front matter, then the evidence in words.

    The front matter (``library_name: peft``, ``base_model``, tags, and the gate's scores as
    ``model-index`` results) is what the Hub and PEFT read; no local path appears anywhere.
    """
    promoted = document["promoted"]
    arm = promoted["arm"]
    provenance = document["provenance"]
    verdict = document["variants"][arm]
    policy = (document["arms"][arm].get("policy") or {}).get("kind", arm)
    front = {
        "library_name": "peft", "base_model": model_id(document["config"]["base_model"]),
        "tags": ["release-gate", "spectral-surgery", "lora", policy],
        "model-index": [{"name": arm, "results": [
            {"task": {"type": "text-generation", "name": task},
             "dataset": {"name": task, "type": task},
             "metrics": [{"type": spec["metric"].split(",")[0], "name": f"{spec['metric']} ({spec['role']}, "
                          f"n={document['arms'][arm]['scores'][task]['n']})",
                          "value": round(document["arms"][arm]["scores"][task]["mean"], 6), "verified": False}]}
            for task, spec in document["tasks"].items()]}],
    }
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
        f"# {arm} — promoted by release-gate", "",
        f"A Spectral Surgery refinement (policy `{policy}`) of a LoRA adapter (sha256 "
        f"`{provenance['adapter_sha256']}`) for base model `{front['base_model']}`.",
        f"Adapter content sha256: `{promoted['sha256']}`.", "",
        "## Why it was promoted", "", *[f"- {c['text']}" for c in verdict["criteria"]], "",
        f"p = {verdict['p_value']:.3g} (the largest of its criteria's exact p-values) ≤ {verdict['boundary']:.3g}, "
        f"its level at look {verdict['look']}{' (Holm across the variants)' if document['gate']['holm'] else ''}.", "",
        "## Provenance", "",
        f"- calibration data sha256: `{provenance.get('calibration_sha256')}`",
        f"- base model config sha256: `{provenance.get('base_config_sha256')}`",
        f"- release-gate {provenance.get('release_gate')}, started {provenance.get('started')}",
        "- the edit itself: `spectral_edit.json` (per-module σ before/after and α)", "",
        "Load it like any PEFT LoRA adapter (`PeftModel.from_pretrained`, or vLLM `--lora-modules`).",
    ]
    return "\n".join(lines) + "\n"


def model_id(base_model: str) -> str:
    """A Hub-style model id for the card: the id itself, a local folder's ``_name_or_path``, else its name."""
    path = Path(base_model).expanduser()
    if not path.exists():
        return base_model
    named = (read_json(path / "config.json") or {}).get("_name_or_path", "") if path.is_dir() else ""
    if named and not named.startswith(("/", ".", "~")):
        return named
    return HUB_IDS.get(path.name, path.name)


def promote(run_dir: Path, variant_dir: Path, document: dict[str, Any]) -> Path:
    """Write ``promoted/`` atomically: a temp dir filled and fsynced, then one rename."""
    target = Path(run_dir) / PROMOTED_DIR
    with atomic_directory(target) as tmp:
        for name in PROMOTED_FILES:
            if (Path(variant_dir) / name).is_file():
                shutil.copy2(Path(variant_dir) / name, tmp / name)
        (tmp / MODEL_CARD_FILE).write_text(model_card(document), encoding="utf-8")
    return target


def withdraw(run_dir: Path) -> None:
    """Remove a ``promoted/`` left by an earlier decision (it vanishes at once)."""
    remove_directory(Path(run_dir) / PROMOTED_DIR)


def write_outputs(run_dir: Path, document: dict[str, Any], variant_dirs: dict[str, Path]) -> None:
    """All CI outputs of a finished run.

    Order matters to anyone watching the directory (e.g. the vLLM resolver):
    on PROMOTE the adapter lands before the decision that vouches for it; on
    any other outcome the decision lands first and the stale adapter goes after.
    """
    run_dir = Path(run_dir)
    if document["outcome"] == Outcome.PROMOTE:
        promote(run_dir, variant_dirs[document["promoted"]["arm"]], document)
    write_json_atomic(run_dir / DECISION_FILE, document)
    if document["outcome"] != Outcome.PROMOTE:
        withdraw(run_dir)
    write_text_atomic(run_dir / SUMMARY_FILE, summary_markdown(document))
    write_text_atomic(run_dir / JUNIT_FILE, junit_xml(document))
