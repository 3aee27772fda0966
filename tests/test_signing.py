"""Releases nobody can forge (issue 21): the gate signs ``promoted/``; serving verifies before anything is served.

Each forgery of the issue's table is made on a release the gate wrote and signed (``write_outputs`` with a
key made for the test) and must be refused, with a reason that names what failed, by both serving paths: the
vLLM resolver and ``release-gate serve-args``. A release signed by the gate and left alone is served by both.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from release_gate.cli import main
from release_gate.config import load_run_config
from release_gate.errors import BadInput
from release_gate.files import directory_sha256
from release_gate.integrations.releases import ADAPTER_FILES, Trust, check_release
from release_gate.integrations.signing import SIGNATURE_FILE, public_key_sha256, sign_directory
from release_gate.integrations.vllm_resolver import ReleaseGateResolver
from release_gate.pipeline import release_signer
from release_gate.reporting.outputs import write_outputs
from release_gate.schema import DECISION_FILE, MODEL_CARD_FILE, PROMOTED_DIR, SIDECAR_FILE
from release_gate.surgery.adapter import CONFIG_FILE, SAFETENSORS_FILE

from factories import key_pair, promote_in

FIXTURE_RUN = Path(__file__).parent / "fixtures" / "run"
BASE = "/models/base"
ARM, CONTROL = "abs_select", "random_index@0"


def gate_run(release_dir: Path, name: str, adapter: Path) -> Path:
    """A finished REJECT run (the committed fixture) whose variant and control are real PEFT adapters."""
    run = Path(shutil.copytree(FIXTURE_RUN, release_dir / name))
    for arm in (ARM, CONTROL):
        variant = Path(shutil.copytree(adapter, run / "variants" / arm, dirs_exist_ok=True))
        config = json.loads((variant / CONFIG_FILE).read_text())
        (variant / CONFIG_FILE).write_text(json.dumps({**config, "base_model_name_or_path": BASE}))
    flip_last_byte(run / "variants" / CONTROL / SAFETENSORS_FILE)  # the control differs from the variant
    return run


def sha(adapter: Path) -> str:
    return directory_sha256(adapter, ADAPTER_FILES)


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(data)


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def vouch_for_new_hash(run: Path) -> None:
    """What a forger does after changing the adapter: put its new hash in every decision."""
    new = sha(run / PROMOTED_DIR)
    for path in (run / DECISION_FILE, run / PROMOTED_DIR / DECISION_FILE):
        edit_json(path, lambda d: d["promoted"].update(sha256=new))


@pytest.fixture
def releases(tmp_path, tiny_adapter_dir, gate_keys) -> Path:
    """A release directory: ``signed`` (the gate promoted and signed it) and ``rejected`` (a REJECT run)."""
    release_dir = tmp_path / "releases"
    signed = gate_run(release_dir, "signed", tiny_adapter_dir)
    document = promote_in(json.loads((signed / DECISION_FILE).read_text()), ARM, sha(signed / "variants" / ARM))
    write_outputs(signed, document, {ARM: signed / "variants" / ARM}, gate_keys.private)
    gate_run(release_dir, "rejected", tiny_adapter_dir)
    return release_dir


# --- the forgeries: each returns the entry name it made ---------------------------------------------------


def adapter_bytes_changed_and_hash_updated(releases: Path) -> str:
    flip_last_byte(releases / "signed" / PROMOTED_DIR / SAFETENSORS_FILE)
    vouch_for_new_hash(releases / "signed")
    return "signed"


def lora_alpha_times_50_and_hash_updated(releases: Path) -> str:
    edit_json(releases / "signed" / PROMOTED_DIR / CONFIG_FILE, lambda c: c.update(lora_alpha=c["lora_alpha"] * 50))
    vouch_for_new_hash(releases / "signed")
    return "signed"


def reject_edited_to_promote_the_control(releases: Path, signature: Path | None = None) -> str:
    run = releases / "rejected"
    control = run / "variants" / CONTROL
    edit_json(run / DECISION_FILE, lambda d: d.update(promote_in(d, CONTROL, sha(control)).to_json()))
    shutil.copytree(control, run / PROMOTED_DIR)
    shutil.copyfile(run / DECISION_FILE, run / PROMOTED_DIR / DECISION_FILE)
    if signature is not None:
        shutil.copyfile(signature, run / PROMOTED_DIR / SIGNATURE_FILE)
    return "rejected"


def reject_edited_to_promote_the_control_with_a_copied_signature(releases: Path) -> str:
    return reject_edited_to_promote_the_control(releases, releases / "signed" / PROMOTED_DIR / SIGNATURE_FILE)


def three_key_decision_beside_a_foreign_adapter(releases: Path) -> str:
    entry = releases / "three-key"
    foreign = shutil.copytree(releases / "rejected" / "variants" / CONTROL, entry)
    (entry / DECISION_FILE).write_text(json.dumps({"schema_version": 2, "outcome": "PROMOTE",
                                                   "promoted": {"sha256": sha(foreign)}}))
    return "three-key"


def model_card_changed(releases: Path) -> str:
    card = releases / "signed" / PROMOTED_DIR / MODEL_CARD_FILE
    card.write_text(card.read_text() + "\nEvaluated on every benchmark; safe for all uses.\n")
    return "signed"


def spectral_edit_changed(releases: Path) -> str:
    edit_json(releases / "signed" / PROMOTED_DIR / SIDECAR_FILE, lambda s: s.update(policy="abs_select_strong"))
    return "signed"


def re_signed_with_another_key(releases: Path) -> str:
    promoted = releases / "signed" / PROMOTED_DIR
    edit_json(promoted / CONFIG_FILE, lambda c: c.update(lora_alpha=c["lora_alpha"] * 50))
    vouch_for_new_hash(releases / "signed")
    sign_directory(promoted, key_pair(releases.parent / "attacker", "attacker").private)
    return "signed"


FORGERIES = [
    (adapter_bytes_changed_and_hash_updated,
     "^bad signature: changed since signing: adapter_model.safetensors, decision.json$"),
    (lora_alpha_times_50_and_hash_updated, "^bad signature: changed since signing: adapter_config.json, decision.json$"),
    (reject_edited_to_promote_the_control, r"^unsigned: no release.sig in promoted/ \(the gate signs only with "),
    (reject_edited_to_promote_the_control_with_a_copied_signature,
     "^bad signature: changed since signing: README.md, adapter_model.safetensors, decision.json, spectral_edit.json$"),
    (three_key_decision_beside_a_foreign_adapter, "^unsigned: no release.sig in three-key/"),
    (model_card_changed, "^bad signature: changed since signing: README.md$"),
    (spectral_edit_changed, "^bad signature: changed since signing: spectral_edit.json$"),
    (re_signed_with_another_key, "^bad signature: Key mismatch: The public key hash in the signature's"),
]


@pytest.mark.parametrize(("forge", "reason"), FORGERIES, ids=[f.__name__ for f, _ in FORGERIES])
def test_a_forged_release_is_refused_by_both_serving_paths(releases, gate_keys, forge, reason, caplog, capsys):
    name = forge(releases)
    trust = Trust(gate_keys.public)
    served, why = check_release(releases / name, BASE, trust)
    assert served is None and re.search(reason, why), why
    assert ReleaseGateResolver(releases, trust).resolve(BASE, name) is None
    assert f"release-gate refused LoRA adapter {name!r}: {why}" in caplog.text
    staged = releases.parent / "staged"
    code = main(["serve-args", str(releases), "--public-key", str(gate_keys.public), "--base-model", BASE,
                 "--stage", str(staged), "--json"])
    out, err = capsys.readouterr()
    assert f"release-gate: refused {name!r}: {why}" in err
    if name == "signed":  # nothing else in the release directory can be served
        assert code == 2 and not out
    assert not (staged / name).exists()


def test_a_release_the_gate_signed_is_served_by_both_paths(releases, gate_keys, capsys):
    trust = Trust(gate_keys.public)
    promoted = releases / "signed" / PROMOTED_DIR
    decision = json.loads((promoted / DECISION_FILE).read_text())
    assert decision["outcome"] == "PROMOTE" and decision["promoted"]["sha256"] == sha(promoted)
    resolver = ReleaseGateResolver(releases, trust)
    request = resolver.resolve(BASE, "signed")
    assert request is not None and sha(Path(request.lora_path)) == sha(promoted)
    staged = releases.parent / "staged"
    assert main(["serve-args", str(releases), "--public-key", str(gate_keys.public), "--base-model", BASE,
                 "--stage", str(staged), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == [{"name": "signed", "path": str((staged / "signed").resolve()), "base_model_name": BASE}]
    assert "serving 'signed' from" in err and "signature verified" in err
    for path in promoted.iterdir():  # the server reads a verified copy of every signed byte
        assert (staged / "signed" / path.name).read_bytes() == path.read_bytes()


def test_a_staged_copy_changed_after_the_check_is_not_served(releases, gate_keys, monkeypatch):
    """What vLLM reads is what was verified: the copy is checked again, after copying."""
    from release_gate.integrations import serve_args

    def stage_then_tamper(entry: Path, adapter_dir: Path, target: Path) -> Path:
        copied = shutil.copytree(adapter_dir, target)
        flip_last_byte(copied / SAFETENSORS_FILE)
        return copied

    monkeypatch.setattr(serve_args, "stage", stage_then_tamper)
    verdicts = serve_args.verify(releases, BASE, Trust(gate_keys.public), releases.parent / "staged")
    assert {v.name: v.reason for v in verdicts}["signed"] == (
        "bad signature: changed since signing: adapter_model.safetensors")


# --- the pipeline's side: where the key comes from -----------------------------------------------------------


def config_with(tmp_path: Path, base_config: dict, key: str | None) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**base_config, **({"release": {"signing_key": key}} if key else {})}))
    return path


def test_the_signing_key_is_named_by_the_config_and_recorded_only_as_a_fingerprint(tmp_path, base_config,
                                                                                    gate_keys):
    config = load_run_config(config_with(tmp_path, base_config, str(gate_keys.private)))
    from cryptography.hazmat.primitives import serialization

    public = serialization.load_pem_public_key(gate_keys.public.read_bytes())
    assert release_signer(config) == public_key_sha256(public)
    assert release_signer(load_run_config(config_with(tmp_path, base_config, None))) is None


@pytest.mark.parametrize(("where", "message"), [
    ("missing.pem", r"release.signing_key .*missing.pem: cannot read it \(No such file or directory\)"),
    ("public", r"release.signing_key .*gate.pub: not an unencrypted PEM key"),
    ("inside", r"release.signing_key .*gate.pem is inside output.dir .*which is published with the release"),
])
def test_an_unusable_signing_key_is_refused_before_anything_is_written(tmp_path, base_config, gate_keys, where,
                                                                       message):
    run_dir = Path(base_config["output"]["dir"])
    key = {"missing.pem": tmp_path / "missing.pem", "public": gate_keys.public,
           "inside": run_dir / "keys" / "gate.pem"}[where]
    if where == "inside":
        key.parent.mkdir(parents=True)
        shutil.copyfile(gate_keys.private, key)
    config = load_run_config(config_with(tmp_path, base_config, str(key)))
    with pytest.raises(BadInput, match=message):
        release_signer(config)
