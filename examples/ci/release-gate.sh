#!/usr/bin/env bash
# Generic CI step: run the gate, publish the summary, keep the report, fail unless PROMOTE.
#
#   examples/ci/release-gate.sh CONFIG [RUN_DIR]
#
# Exit status is release-gate's own: 0 PROMOTE, 10 REJECT, 11 INCONCLUSIVE, 2 bad config/input,
# 1 runtime failure. Set RELEASE_GATE_REPORT_ONLY=1 to always pass (the verdict is still published).
set -uo pipefail

config="${1:?usage: release-gate.sh CONFIG [RUN_DIR]}"
run_dir="${2:-reports/ci-${CI_PIPELINE_ID:-${GITHUB_RUN_ID:-local}}}"
extra=()
[[ "${RELEASE_GATE_REPORT_ONLY:-0}" == "1" ]] && extra+=(--exit-zero)

release-gate run "$config" --set "output.dir=$run_dir" "${extra[@]}"
status=$?

if [[ -f "$run_dir/summary.md" ]]; then
  # GitHub Actions renders this file as the job summary; other CI systems can post it as a comment.
  if [[ -n "${GITHUB_STEP_SUMMARY:-}" ]]; then cat "$run_dir/summary.md" >> "$GITHUB_STEP_SUMMARY"; fi
  cat "$run_dir/summary.md"
fi
case "$status" in
  0) echo "release-gate: PROMOTE -> $run_dir/promoted" ;;
  10) echo "release-gate: REJECT (see $run_dir/report.html)" ;;
  11) echo "release-gate: INCONCLUSIVE: more evaluation items needed (see $run_dir/report.html)" ;;
  2) echo "release-gate: bad config or input" ;;
  *) echo "release-gate: runtime failure ($status)" ;;
esac
exit "$status"
