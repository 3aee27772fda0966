#!/usr/bin/env bash
# Build release-gate's wheel and check it from a clean, non-editable install.
#
# What only a wheel can lose: a subpackage missing from pyproject's package list, package data
# (policies/*.yaml, templates/*.j2, evaluation/task_templates/*, py.typed), the console script and the
# two entry points (lm_eval.models, vllm.general_plugins). An editable install hides all of these.
#
# The wheel is built from a copy of the sources (no build/ or *.egg-info in the tree, and no stale
# build/lib smuggling deleted modules into the wheel), installed with --no-deps into a fresh virtual
# environment, and run from outside the checkout. The heavy dependencies (torch, vLLM, lm-eval) are
# not installed again: one .pth line, read after the new environment's own site-packages, lets it see
# the project environment's, whose editable release-gate stays invisible (its .pth hook is not run
# from there, and the wheel's distribution comes first). So the check takes seconds of CPU: first the
# files (light), then what runs from them (imports PEFT, lm-eval and vLLM once).
#
# Usage: scripts/check_wheel.sh [PYTHON]   (default: .venv/bin/python). Last line: "wheel check: OK …"
# or "wheel check: FAILED …" (exit 1) after the list of what is missing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
PY="${1:-$root/.venv/bin/python}"
work="$(mktemp -d "${TMPDIR:-/tmp}/release-gate-wheel.XXXXXX")"
trap 'rm -rf "$work"' EXIT
fail() { echo "wheel check: FAILED: $*" >&2; exit 1; }

mkdir "$work/src"
cp -r "$root/pyproject.toml" "$root/README.md" "$root/release_gate" "$root/policies" "$root/templates" "$work/src/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
"$PY" -m pip wheel -q --no-deps --no-build-isolation --wheel-dir "$work/dist" "$work/src" >"$work/build.log" 2>&1 \
  || { cat "$work/build.log" >&2; fail "the wheel does not build"; }
wheel=("$work"/dist/release_gate-*.whl)
"$PY" -m venv --without-pip "$work/venv"
"$PY" -m pip --python "$work/venv/bin/python" install -q --no-deps --no-index "${wheel[0]}"
site="$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' >"$site/zz_project_environment.pth"
cd "$work"  # never import the checkout's release_gate

# 1. Files: every file of the package's source tree, policies/ and templates/ is where the wheel must put it.
"$work/venv/bin/python" - "$root" "$site" <<'PY' || exit 1
import sys
from pathlib import Path

root, site = Path(sys.argv[1]), Path(sys.argv[2]).resolve()
import release_gate  # noqa: E402  (light: no torch, vLLM or lm-eval)

package = Path(release_gate.__file__).resolve().parent
if not package.is_relative_to(site):
    sys.exit(f"wheel check: FAILED: release_gate was imported from {package}, not from the wheel")
shipped = {  # source file -> where the wheel must put it
    **{p: package / p.relative_to(root / "release_gate") for p in (root / "release_gate").rglob("*")
       if p.is_file() and "__pycache__" not in p.parts},
    **{p: package / "policies" / p.name for p in (root / "policies").glob("*.yaml")},
    **{p: package / "templates" / p.name for p in (root / "templates").glob("*.j2")},
}
missing = [f"{target.relative_to(site)} (from {source.relative_to(root)})"
           for source, target in sorted(shipped.items()) if not target.is_file()]
if missing:
    print("\n".join(f"  not in the wheel: {m}" for m in missing), file=sys.stderr)
    sys.exit(f"wheel check: FAILED: {len(missing)} of {len(shipped)} files are missing from the wheel")
print(f"{len(shipped)} files", file=open("files.txt", "w"))
PY

# 2. What runs from them: the console script, the data readers, the two entry points.
"$work/venv/bin/release-gate" config-schema >"$work/schema.json" || fail "release-gate config-schema"
"$work/venv/bin/python" - "$root" "$site" <<'PY' || exit 1
import contextlib
import io
import json
import sys
import traceback
from importlib import metadata
from pathlib import Path

root, site = Path(sys.argv[1]), Path(sys.argv[2]).resolve()
failures = []


def from_wheel(path) -> bool:
    return Path(path).resolve().is_relative_to(site)


def check(what, test):
    """Run one check; a failure (or any exception) is recorded with its cause, and the rest still run."""
    try:
        problem = test()
    except Exception:  # noqa: BLE001 - a check that crashes is a finding, not the end of the report
        problem = traceback.format_exc(limit=-2).strip().splitlines()[-1]
    if problem:
        failures.append(f"{what}: {problem}")


def schema():
    return None if "properties" in json.loads(Path("schema.json").read_text()) else "printed no JSON Schema"


def policies():
    from release_gate.cli import main
    from release_gate.surgery.policy_files import builtin_policy_dir

    with contextlib.redirect_stdout(io.StringIO()) as out:
        main(["policies"])
    listed = {line.split()[0] for line in out.getvalue().splitlines() if line and not line[0].isspace()}
    unlisted = sorted({p.stem for p in (root / "policies").glob("*.yaml")} - listed)
    if not from_wheel(builtin_policy_dir()):
        return f"read from {builtin_policy_dir()}"
    return f"does not list {', '.join(unlisted)}" if unlisted else None


def report_templates():
    from release_gate.reporting.render import environment, templates_dir

    env = environment()
    for template in sorted(p.name for p in (root / "templates").glob("*.j2")):
        env.get_template(template)  # parses it
    return None if from_wheel(templates_dir()) else f"read from {templates_dir()}"


def task_templates():
    from release_gate.evaluation.tasks import TEMPLATES

    return None if from_wheel(TEMPLATES) and any(TEMPLATES.glob("*.yaml")) else f"none at {TEMPLATES}"


def declared():
    distribution = metadata.distribution("release-gate")
    if not from_wheel(distribution.locate_file("")):
        return f"the release-gate distribution found is at {distribution.locate_file('')}"
    names = {(ep.group, ep.name) for ep in distribution.entry_points}
    wanted = {("console_scripts", "release-gate"), ("lm_eval.models", "release-gate"),
              ("vllm.general_plugins", "release_gate_resolver")}
    return f"not declared: {sorted(wanted - names)}" if wanted - names else None


def lm_eval_model():
    from lm_eval.api.registry import get_model

    [entry_point] = metadata.entry_points(group="lm_eval.models", name="release-gate")
    model = entry_point.load()
    if not from_wheel(sys.modules[model.__module__].__file__):
        return f"loads {model.__module__} from {sys.modules[model.__module__].__file__}"
    return None if get_model(entry_point.name) is model else "lm-eval's registry does not return it"


def vllm_plugin():
    [entry_point] = metadata.entry_points(group="vllm.general_plugins", name="release_gate_resolver")
    plugin = entry_point.load()
    if not from_wheel(sys.modules[plugin.__module__].__file__):
        return f"loads {plugin.__module__} from {sys.modules[plugin.__module__].__file__}"
    return None if callable(plugin) else "is not callable"


check("release-gate config-schema", schema)
check("release-gate policies", policies)
check("report templates", report_templates)
check("lm-eval task templates", task_templates)
check("entry points", declared)
check("entry point lm_eval.models:release-gate", lm_eval_model)
check("entry point vllm.general_plugins:release_gate_resolver", vllm_plugin)
if failures:
    print("\n".join(f"  {failure}" for failure in failures), file=sys.stderr)
    sys.exit(f"wheel check: FAILED: {len(failures)} of 7 checks")
print(f"wheel check: OK ({Path('files.txt').read_text().strip()}: modules, policies, report and task templates, "
      "py.typed; config-schema, policies, lm_eval.models and vllm.general_plugins from a non-editable install)")
PY
