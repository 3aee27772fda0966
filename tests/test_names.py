"""Names are data, never paths: policy, task and release names that could reach outside their directory.

Each hostile name is refused with exit 2 naming the file and the key before anything is written, and
the whole temporary tree is unchanged afterwards (nothing created anywhere, inside or outside).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from release_gate.cli import main
from release_gate.files import is_path_segment, path_segment
from release_gate.integrations.releases import Trust, is_safe_name
from release_gate.integrations.vllm_resolver import ReleaseGateResolver

HOSTILE = [
    "../../../escape_<img src=x onerror=alert(1)>",
    "..",
    "a/b",
    "/tmp/absolute",
    "nul\x00byte",
    "x" * 300,
    "\u0430bs_select",  # Cyrillic а: looks like abs_select
    "<b>bold</b>",
    ".hidden",
    "-flag",
    "a..b",
]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("name", HOSTILE, ids=range(len(HOSTILE)))
def test_a_hostile_policy_name_is_refused_before_anything_is_written(tmp_path, base_config, capsys, name):
    policy = tmp_path / "hostile.yaml"
    policy.write_text(yaml.safe_dump({"name": name, "kind": "abs_select", "params": {"amp_factor": 1.5}}))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**base_config, "policies": [str(policy)]}))
    before = snapshot(tmp_path)
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(policy) in err and "name: cannot name a file or directory" in err and "(line " in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", HOSTILE, ids=range(len(HOSTILE)))
def test_a_hostile_task_name_is_refused_before_anything_is_written(tmp_path, base_config, capsys, name):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**base_config, "targets": [{"task": name, "metric": "acc"}]}))
    before = snapshot(tmp_path)
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "targets[0].task: cannot name a file or directory" in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", HOSTILE, ids=range(len(HOSTILE)))
def test_a_hostile_release_name_is_never_looked_up(tmp_path, name):
    release = tmp_path / "release"
    release.mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "decision.json").write_text(json.dumps({"schema_version": 2, "outcome": "PROMOTE"}))
    assert not is_safe_name(name) and not is_path_segment(name)
    with pytest.raises(Exception, match="cannot name a file or directory"):
        path_segment(name, "release")
    assert ReleaseGateResolver(release, Trust(allow_unsigned="test")).resolve("base", name) is None


def test_plain_names_pass():
    for name in ("abs_select", "random_index@2", "strong_abs-v1.2+rc", "commonsense_qa_heldout"):
        assert path_segment(name, "policy") == name
