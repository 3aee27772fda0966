"""Run config: precedence, example configs, and every config bad input of SPEC §13 (exit 2, nothing lost)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from release_gate.cli import main
from release_gate.config import load_run_config

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))


def _write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_validate(path):
    config = load_run_config(path)
    assert config.targets and config.guards and config.policies


def test_precedence_defaults_file_set(tmp_path, base_config):
    base_config["gate"] = {"alpha": 0.1}
    path = _write(tmp_path, base_config)
    assert load_run_config(path).gate.alpha == 0.1
    assert load_run_config(path).to_json()["gate"] == {"alpha": 0.1}  # the resolved config records what was set
    config = load_run_config(path, ["gate.alpha=0.01", "controls.seeds=[4, 5]", "evaluation.limit=7"])
    assert config.gate.alpha == 0.01 and config.controls.seeds == (4, 5) and config.evaluation.limit == 7
    assert load_run_config(path).edit.targets == ("o_proj", "down_proj")  # dataclass default


BAD = [
    ({"colour": "blue"}, "colour: unknown key"),
    ({"gate": {"alpha": 0.7}}, "gate.alpha: must be in (0, 0.5)"),
    ({"gate": {"mode": "vibes"}}, "gate.mode: must be one of"),
    ({"gate": {"alpha": "low"}}, "gate.alpha: must be a number"),
    ({"gate": {"holm": "yes"}}, "gate.holm: must be true or false"),
    ({"gate": {"speed": 1}}, "gate.speed: unknown key"),
    ({"guards": [{"task": "ifeval", "metric": "prompt_level_strict_acc", "max_drop": -0.1}]},
     "guards[0].max_drop: the alignment-tax budget must be a number ≥ 0"),
    ({"guards": [{"task": "ifeval", "metric": "prompt_level_strict_acc"}]}, "guards[0].max_drop"),
    ({"targets": []}, "targets: at least one target task is required"),
    ({"targets": [{"task": "commonsense_qa"}]}, "targets[0].metric: required"),
    ({"targets": [{"task": "commonsense_qa", "metric": "acc", "weight": 0}]}, "targets[0].weight: must be > 0"),
    ({"targets": [{"task": "commonsense_qa", "metric": "acc", "limit": 0}]}, "targets[0].limit: must be ≥ 1"),
    ({"controls": {"seeds": []}}, "controls.seeds: at least one random_index seed"),
    ({"controls": {"reference": "median"}}, "controls.reference: must be mean or each"),
    ({"evaluation": {"gpu_memory_utilization": 2}}, "evaluation.gpu_memory_utilization: must be in (0, 1]"),
    ({"evaluation": {"server": {"model": "x"}}}, "evaluation.server.url: required"),
    ({"calibration": {"file": "c.jsonl", "n": 0}}, "calibration.n: must be ≥ 1"),
    ({"evaluation": {"chat_template": True, "server": {"url": "http://127.0.0.1:1"}}},
     "evaluation.chat_template: not supported with evaluation.server"),
    ({"policies": ["abs_select", {"amp_factor": 2}]}, "policies[1]: expected a policy name"),
]


@pytest.mark.parametrize(("change", "message"), BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_config_bad_input_names_the_key(tmp_path, base_config, capsys, change, message):
    path = _write(tmp_path, {**base_config, **change})
    before = path.read_bytes()
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err
    assert err.count("\n") == 1  # one line
    assert path.read_bytes() == before and not (tmp_path / "run").exists()


RUNTIME_BAD = [
    ({"policies": ["abs_select", "nonsense"]}, "unknown policy 'nonsense'"),
    ({"policies": [{"name": "smooth_abs", "amp_factor": 0.5, "sup_factor": 0.9}]}, "amp_factor"),
    ({"policies": [{"name": "abs_select", "core_frac": 1.5}]}, "core_frac"),
    ({"policies": [{"name": "grad_direction", "eta_suppress": -1}]}, "eta_suppress"),
    ({"policies": ["random_index"]}, "is the random control; configure it under controls.seeds"),
    ({"targets": [{"task": "no_such_task", "metric": "acc"}]}, "unknown task 'no_such_task'"),
    ({"targets": [{"task": "commonsense_qa", "metric": "bleu"}]}, "does not produce metric 'bleu'"),
    ({"controls": {"params": {"core_frac": 2.0}}}, "controls.params: policy 'random_index', key 'core_frac'"),
    ({"controls": {"params": {"seeds": [7]}}}, "controls.params: seeds are set by controls.seeds"),
    ({"evaluation": {"engine_args": {"warp_speed": 9}}}, "evaluation.engine_args: warp_speed is not an argument of "
                                                         "vllm.LLM"),
]


@pytest.mark.parametrize(("change", "message"), RUNTIME_BAD, ids=[m.split(" ")[0] for _, m in RUNTIME_BAD])
def test_policy_and_task_errors_before_anything_is_written(tmp_path, base_config, capsys, change, message):
    path = _write(tmp_path, {**base_config, **change})
    assert main(["run", str(path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_output_inside_the_adapter_is_refused(tmp_path, base_config, tiny_adapter_dir, capsys):
    before = {p.name: p.read_bytes() for p in Path(tiny_adapter_dir).iterdir() if p.is_file()}
    path = _write(tmp_path, {**base_config, "output": {"dir": str(Path(tiny_adapter_dir) / "run")}})
    assert main(["run", str(path)]) == 2
    assert "inside the input adapter" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in Path(tiny_adapter_dir).iterdir() if p.is_file()} == before


def test_foreign_or_earlier_run_dir_is_not_taken_over(tmp_path, base_config, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    path = _write(tmp_path, base_config)
    assert main(["run", str(path)]) == 2
    assert "is not a release-gate run directory" in capsys.readouterr().err
    (out / ".release-gate-run").write_text("")
    assert main(["run", str(path)]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"


def test_yaml_syntax_error_gives_the_line(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text("base_model: x\nadapter: [unclosed\n")
    assert main(["run", str(path)]) == 2
    assert "line" in capsys.readouterr().err


def test_the_github_action_reports_a_bad_config(tmp_path):
    """The composite action's step fails with release-gate's own code and sets outcome=ERROR."""
    from actions import run_action

    status, outputs, summary = run_action({"config": str(tmp_path / "missing.yaml")}, tmp_path)
    assert status == 2 and outputs["outcome"] == "ERROR" and outputs["exit-code"] == "2"
    assert "file not found" in summary
    status, outputs, _ = run_action({"config": str(tmp_path / "missing.yaml"), "report-only": "true"}, tmp_path)
    assert status == 0 and outputs["outcome"] == "ERROR"
    root = Path(__file__).parent.parent
    steps = yaml.safe_load((root / "examples/ci/github-actions.yml").read_text())["jobs"]["gate"]["steps"]
    gate = next(step for step in steps if step.get("id") == "gate")
    assert gate["uses"].startswith("your-org/release-gate@") and gate["with"]["config"]
    assert {"outcome", "promoted-sha256", "report"} <= set(yaml.safe_load((root / "action.yml").read_text())["outputs"])

def test_a_key_written_twice_is_refused_with_both_lines(tmp_path, base_config, capsys):
    path = _write(tmp_path, base_config)
    path.write_text(path.read_text() + "gate:\n  alpha: 0.05\n  holm: true\n  alpha: 0.2\n")
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    lines = len(path.read_text().splitlines())
    assert f"gate.alpha: written twice (lines {lines - 2} and {lines})" in err and str(path) in err
    assert not (tmp_path / "run").exists()


def test_errors_name_the_line_and_the_set_override(tmp_path, base_config, capsys):
    path = _write(tmp_path, {**base_config, "gate": {"alpha": 0.9}})
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "alpha" in text)
    assert main(["run", str(path)]) == 2
    assert f"gate.alpha: must be in (0, 0.5), got 0.9 (line {line})" in capsys.readouterr().err
    assert main(["run", str(_write(tmp_path, base_config)), "--set", "gate.futility=0.7"]) == 2
    assert "gate.futility: the conditional power below which an arm stops must be in [0, 0.5), got 0.7 (--set)" in \
        capsys.readouterr().err


def test_config_schema_describes_every_example(capsys):
    import json

    import jsonschema

    assert main(["config-schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"gate", "evaluation", "targets", "guards", "calibration"} <= set(schema["properties"])
    assert "source" not in schema["properties"]
    for path in EXAMPLES:
        data = yaml.safe_load(path.read_text())
        jsonschema.validate(data, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"base_model": "m", "adapter": "a", "gate": {"alpha": "low"}}, schema)


def test_the_server_api_key_is_never_recorded(tmp_path, base_config, monkeypatch):
    secret = "sk-test-never-written"
    path = _write(tmp_path, {**base_config, "evaluation": {"server": {"url": "http://127.0.0.1:1", "api_key": secret}}})
    config = load_run_config(path)
    assert config.evaluation.server.api_key == secret
    assert secret not in json.dumps(config.to_json()) and secret not in repr(config)
