"""The serving-time gate: vLLM's LoRA resolver serves only adapters a signed PROMOTE decision approved.

Forged releases (the rows of issue 21) are in ``test_signing.py``; here, every other way a release can be
wrong, the resolver's plumbing, and real servers started with the plugin and with ``serve-args``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from vllm.lora.resolver import LoRAResolverRegistry

from release_gate.assets import fetch
from release_gate.cli import main
from release_gate.document import DecisionDocument
from release_gate.files import directory_sha256
from release_gate.integrations import vllm_resolver
from release_gate.integrations.releases import ADAPTER_FILES, Trust, check_release, is_safe_name
from release_gate.integrations.signing import SIGNATURE_FILE, sign_directory
from release_gate.integrations.vllm_resolver import (
    ALLOW_UNSIGNED_ENV,
    PUBLIC_KEY_ENV,
    RELEASE_DIR_ENV,
    RESOLVER_NAME,
    ReleaseGateResolver,
    register,
)
from release_gate.reporting.outputs import write_outputs
from release_gate.surgery.adapter import CONFIG_FILE, SAFETENSORS_FILE

from factories import key_pair, promote_in, smollm2_adapter
from servers import api_server

BASE = "/models/base"


FIXTURE_RUN = Path(__file__).parent / "fixtures" / "run"


def gate_decision(outcome: str, arm: str, sha256: str | None) -> DecisionDocument:
    """A real run's ``decision.json`` (the committed fixture) with ``outcome``; a PROMOTE names ``arm``."""
    document = json.loads((FIXTURE_RUN / "decision.json").read_text())
    if outcome == "PROMOTE":
        return promote_in(document, arm, sha256)
    return DecisionDocument.model_validate({**document, "outcome": outcome, "promoted": None})


def edit_decision(entry: Path, **fields) -> None:
    """Change fields of the decision the gate wrote (a damaged or foreign release)."""
    path = entry / "decision.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def publish(release_dir: Path, name: str, adapter: Path, key: Path | None, *, outcome: str = "PROMOTE",
            flat: bool = False) -> Path:
    """A release entry as the gate writes it (``write_outputs``: ``promoted/`` signed with ``key``, then the
    decision on its hash); ``flat`` keeps the adapter files beside the gate's decision instead (a
    hand-assembled release, signed as a whole with ``key``)."""
    entry = release_dir / name
    entry.mkdir(parents=True)
    document = gate_decision(outcome, "abs_select", directory_sha256(adapter, ADAPTER_FILES))
    if flat:
        shutil.copytree(adapter, entry, dirs_exist_ok=True)
        (entry / "decision.json").write_text(json.dumps(document.to_json()))
        if key is not None:
            sign_directory(entry, key)
    else:
        write_outputs(entry, document, {"abs_select": adapter}, key)
    return entry


def set_base_model(adapter: Path, base_model: str | None) -> Path:
    config = json.loads((adapter / CONFIG_FILE).read_text())
    config["base_model_name_or_path"] = base_model
    (adapter / CONFIG_FILE).write_text(json.dumps(config))
    return adapter


def flip_last_byte(path: Path) -> None:
    """Tamper with the weights: the file stays a loadable safetensors, only one value changes."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(data)


@pytest.fixture
def adapter(tiny_adapter_dir, tmp_path) -> Path:
    """A real PEFT adapter trained (randomly) for ``BASE``."""
    return set_base_model(shutil.copytree(tiny_adapter_dir, tmp_path / "adapter"), BASE)


@pytest.fixture
def trust(gate_keys) -> Trust:
    """A serving host that holds the gate's public key."""
    return Trust(gate_keys.public)


@pytest.fixture
def gate_log(caplog, monkeypatch) -> pytest.LogCaptureFixture:
    """The resolver's records, once each: it logs under vLLM's logger, which stops propagation before
    pytest's root handler once vLLM has configured logging in this process (and not before)."""
    monkeypatch.setattr(vllm_resolver.logger, "propagate", False)
    vllm_resolver.logger.addHandler(caplog.handler)
    yield caplog
    vllm_resolver.logger.removeHandler(caplog.handler)


def test_a_published_run_directory_is_approved(adapter, tmp_path, gate_keys, trust):
    entry = publish(tmp_path / "release", "support-bot", adapter, gate_keys.private)
    served, reason = check_release(entry, BASE, trust)
    assert served == entry / "promoted"
    assert reason == f"PROMOTE (sha256 {directory_sha256(entry / 'promoted', ADAPTER_FILES)}), signature verified"


def test_a_flat_entry_is_approved(adapter, tmp_path, gate_keys, trust):
    entry = publish(tmp_path / "release", "flat", adapter, gate_keys.private, flat=True)
    assert check_release(entry, BASE, trust)[0] == entry


def refuse_missing_decision(entry: Path) -> None:
    (entry / "promoted" / "decision.json").unlink()


def refuse_future_schema(entry: Path) -> None:
    edit_decision(entry, schema_version=3)


def refuse_release_gate_0_1(entry: Path) -> None:
    edit_decision(entry, schema_version=1)


def refuse_broken_json(entry: Path) -> None:
    (entry / "decision.json").write_text("{not json")


def refuse_promote_without_hash(entry: Path) -> None:
    edit_decision(entry, promoted={"arm": "abs_select", "sha256": None, "path": "promoted"})


def refuse_missing_weights(entry: Path) -> None:
    (entry / "promoted" / SAFETENSORS_FILE).unlink()


def refuse_tampered_weights(entry: Path) -> None:
    flip_last_byte(entry / "promoted" / SAFETENSORS_FILE)


def refuse_tampered_config(entry: Path) -> None:
    config = entry / "promoted" / CONFIG_FILE
    config.write_text(config.read_text().replace('"r": 8', '"r": 9'))


def refuse_extra_file(entry: Path) -> None:
    (entry / "promoted" / "extra.bin").write_bytes(b"not signed")


def refuse_symlink(entry: Path) -> None:
    card = entry / "promoted" / "README.md"
    card.rename(entry / "README.md")
    card.symlink_to(entry / "README.md")


def refuse_reject(entry: Path) -> None:  # a later run decided again: the gate withdraws promoted/
    write_outputs(entry, gate_decision("REJECT", "abs_select", None), {})


def refuse_inconclusive(entry: Path) -> None:
    write_outputs(entry, gate_decision("INCONCLUSIVE", "abs_select", None), {})


@pytest.mark.parametrize(("damage", "reason"), [
    (refuse_missing_decision, "^bad signature: signed but missing: decision.json$"),
    (refuse_reject, "^outcome REJECT$"),
    (refuse_inconclusive, "^outcome INCONCLUSIVE$"),
    (refuse_future_schema, r"^decision.json schema_version 3 is not 2 "),
    (refuse_release_gate_0_1, r"^decision.json schema_version 1 is not 2 \(decisions of release-gate 0.1 are not served"),
    (refuse_broken_json, "^unreadable decision.json: "),
    (refuse_promote_without_hash, "^decision.json does not follow its schema: promoted.sha256: "),
    (refuse_missing_weights, r"^no adapter files \(adapter_config.json, adapter_model.safetensors\)"),
    (refuse_tampered_weights, "^bad signature: changed since signing: adapter_model.safetensors$"),
    (refuse_tampered_config, "^bad signature: changed since signing: adapter_config.json$"),
    (refuse_extra_file, "^bad signature: not signed: extra.bin$"),
    (refuse_symlink, "^bad signature: .*README.md.* is a symlink"),
])
def test_anything_but_an_intact_signed_promoted_adapter_is_refused(adapter, tmp_path, gate_keys, trust, damage,
                                                                   reason):
    entry = publish(tmp_path / "release", "candidate", adapter, gate_keys.private)
    damage(entry)
    served, why = check_release(entry, BASE, trust)
    assert served is None
    assert re.search(reason, why), why


def test_a_missing_entry_is_refused(tmp_path, trust):
    assert check_release(tmp_path / "nothing", BASE, trust) == (None, f"no release entry {tmp_path / 'nothing'}")


def test_an_adapter_for_another_base_model_is_refused(adapter, tmp_path, gate_keys, trust):
    entry = publish(tmp_path / "release", "other", set_base_model(adapter, "/models/other"), gate_keys.private)
    assert check_release(entry, BASE, trust) == (
        None, f"base model mismatch: adapter is for /models/other, server runs {BASE}")


def test_two_spellings_of_one_local_base_model_match(adapter, tmp_path, gate_keys, trust):
    (tmp_path / "model").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "model")
    entry = publish(tmp_path / "release", "local", set_base_model(adapter, str(tmp_path / "link")), gate_keys.private)
    assert check_release(entry, f"{tmp_path}/model/", trust)[0] == entry / "promoted"


def test_an_unnamed_base_model_warns_but_serves(adapter, tmp_path, gate_keys, trust, gate_log):
    entry = publish(tmp_path / "release", "anonymous", set_base_model(adapter, None), gate_keys.private)
    with gate_log.at_level(logging.WARNING, logger=vllm_resolver.logger.name):
        assert check_release(entry, BASE, trust, vllm_resolver.logger)[0] == entry / "promoted"
    assert "adapter_config.json names none" in gate_log.text


@pytest.mark.parametrize(("name", "safe"), [
    ("support-bot", True), ("v1.2_final+rc", True), ("..", False), (".", False), (".hidden", False),
    ("a/b", False), ("/etc", False), ("../release", False), ("a\\b", False), ("", False), ("a\0b", False),
])
def test_only_plain_names_reach_the_filesystem(name, safe):
    assert is_safe_name(name) is safe


def test_the_resolver_serves_a_verified_private_copy_of_the_signed_release(adapter, tmp_path, gate_keys, trust):
    release = tmp_path / "release"
    entry = publish(release, "support-bot", adapter, gate_keys.private)
    resolver = ReleaseGateResolver(release, trust)  # owns the copies: they live as long as it does
    request = asyncio.run(resolver.resolve_lora(BASE, "support-bot"))
    assert request is not None and request.lora_name == "support-bot"
    served = Path(request.lora_path)
    assert release not in served.parents
    signed = sorted(p.name for p in (entry / "promoted").iterdir())
    assert SIGNATURE_FILE in signed and sorted(p.name for p in served.iterdir()) == signed
    for name in signed:
        assert (served / name).read_bytes() == (entry / "promoted" / name).read_bytes()


def test_the_resolver_refuses_with_a_logged_reason(adapter, tmp_path, gate_keys, trust, gate_log):
    release = tmp_path / "release"
    publish(release, "rejected", adapter, gate_keys.private, outcome="REJECT")
    resolver = ReleaseGateResolver(release, trust)
    with gate_log.at_level(logging.WARNING, logger=vllm_resolver.logger.name):
        assert asyncio.run(resolver.resolve_lora(BASE, "rejected")) is None
        assert asyncio.run(resolver.resolve_lora(BASE, "../release/rejected")) is None
    assert "release-gate refused LoRA adapter 'rejected': outcome REJECT" in gate_log.text
    assert "release-gate refused LoRA adapter '../release/rejected': unsafe name" in gate_log.text


@pytest.fixture
def registry():
    """vLLM's process-wide resolver registry, restored after the test."""
    before = dict(LoRAResolverRegistry.resolvers)
    yield LoRAResolverRegistry
    LoRAResolverRegistry.resolvers.clear()
    LoRAResolverRegistry.resolvers.update(before)


@pytest.fixture
def no_gate_env(monkeypatch):
    for name in (RELEASE_DIR_ENV, PUBLIC_KEY_ENV, ALLOW_UNSIGNED_ENV):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_plugin_is_inert_without_a_release_dir(registry, no_gate_env):
    register()
    assert RESOLVER_NAME not in registry.get_supported_resolvers()


def test_the_plugin_registers_the_resolver_for_a_release_dir_and_key(registry, no_gate_env, tmp_path, gate_keys):
    no_gate_env.setenv(RELEASE_DIR_ENV, str(tmp_path))
    no_gate_env.setenv(PUBLIC_KEY_ENV, str(gate_keys.public))
    register()
    resolver = registry.get_resolver(RESOLVER_NAME)
    assert isinstance(resolver, ReleaseGateResolver) and resolver.release_dir == tmp_path
    assert resolver.trust == Trust(gate_keys.public)


@pytest.mark.parametrize(("key", "message"), [
    (None, f"no public key to verify releases with .*set {PUBLIC_KEY_ENV}, or {ALLOW_UNSIGNED_ENV}=1"),
    ("missing.pub", r"public key .*missing.pub: cannot read it \(No such file or directory\)"),
    ("gate.pem", r"public key .*gate.pem: not an unencrypted PEM key"),
])
def test_no_usable_public_key_stops_the_server_rather_than_serving_unverified(registry, no_gate_env, tmp_path,
                                                                                gate_keys, key, message):
    no_gate_env.setenv(RELEASE_DIR_ENV, str(tmp_path))
    if key is not None:
        no_gate_env.setenv(PUBLIC_KEY_ENV, str(gate_keys.private.parent / key))
    with pytest.raises(ValueError, match=message):
        register()
    assert RESOLVER_NAME not in registry.get_supported_resolvers()


def test_the_explicit_opt_out_serves_unsigned_releases_and_says_so_in_every_line(registry, no_gate_env, adapter,
                                                                                   tmp_path, gate_keys, gate_log):
    release = tmp_path / "release"
    publish(release, "unsigned", adapter, None)
    publish(release, "rejected", adapter, None, outcome="REJECT")
    no_gate_env.setenv(RELEASE_DIR_ENV, str(release))
    no_gate_env.setenv(PUBLIC_KEY_ENV, str(gate_keys.public))
    no_gate_env.setenv(ALLOW_UNSIGNED_ENV, "1")
    with gate_log.at_level(logging.INFO, logger=vllm_resolver.logger.name):
        register()
        resolver = registry.get_resolver(RESOLVER_NAME)
        assert resolver.resolve(BASE, "unsigned") is not None
        assert resolver.resolve(BASE, "rejected") is None
    lines = [r.getMessage() for r in gate_log.records if "'unsigned'" in r.getMessage() or "'rejected'" in r.getMessage()]
    assert len(lines) == 2 and all(f"{ALLOW_UNSIGNED_ENV}=1" in line for line in lines), lines
    assert "UNSIGNED: served only because of" in lines[0]


def test_other_active_resolvers_are_named_once(registry, tmp_path, trust, gate_log):
    registry.register_resolver(RESOLVER_NAME, resolver := ReleaseGateResolver(tmp_path, trust))
    registry.register_resolver("Filesystem Resolver", ReleaseGateResolver(tmp_path, trust))
    with gate_log.at_level(logging.WARNING, logger=vllm_resolver.logger.name):
        resolver.resolve(BASE, "a")
        resolver.resolve(BASE, "b")
    assert gate_log.text.count("other LoRA resolvers are active (Filesystem Resolver)") == 1


def test_a_missing_release_dir_stops_the_server_rather_than_serving_ungated(registry, no_gate_env, tmp_path):
    no_gate_env.setenv(RELEASE_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=f"{RELEASE_DIR_ENV}=.*missing is not a directory"):
        register()
    assert RESOLVER_NAME not in registry.get_supported_resolvers()


# --- a real OpenAI API server with the plugin installed through its entry point -------------------

PROMPT = "The capital of France is"


def post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def complete(url: str, model: str) -> tuple[int, dict]:
    """One greedy token with its logprob: enough to tell the adapter from the base model."""
    return post(f"{url}/v1/completions",
                {"model": model, "prompt": PROMPT, "max_tokens": 1, "temperature": 0, "logprobs": 1})


@pytest.fixture(scope="module")
def gated_server(tmp_path_factory, gate_keys):
    """One server for the module; RELEASE_GATE_RELEASE_DIR holds an approved entry and four that are not."""
    model_dir = fetch().model_dir
    root = tmp_path_factory.mktemp("gate")
    adapter = smollm2_adapter(model_dir, root / "adapter", seed=11)
    release = root / "release"
    publish(release, "approved", adapter, gate_keys.private)
    shutil.copytree(adapter, release / "undecided")
    publish(release, "rejected", adapter, gate_keys.private, outcome="REJECT")
    tampered = publish(release, "tampered", adapter, gate_keys.private, flat=True)
    flip_last_byte(tampered / SAFETENSORS_FILE)
    publish(release, "unsigned", adapter, None)
    log = root / "server.log"
    env = {RELEASE_DIR_ENV: str(release), PUBLIC_KEY_ENV: str(gate_keys.public)}
    with api_server(model_dir, log, env=env) as (url, _process):
        yield url, log


@pytest.mark.slow
@pytest.mark.vllm
def test_server_serves_a_promoted_adapter_by_name(gated_server):
    url, log = gated_server
    status, body = complete(url, "approved")
    assert status == 200, body
    assert body["model"] == "approved"
    status, base = complete(url, str(fetch().model_dir))
    assert status == 200, base
    ours, theirs = body["choices"][0]["logprobs"], base["choices"][0]["logprobs"]
    assert ours["token_logprobs"][0] != pytest.approx(theirs["token_logprobs"][0], abs=1e-4)
    with urllib.request.urlopen(f"{url}/v1/models", timeout=30) as response:
        assert "approved" in [card["id"] for card in json.load(response)["data"]]
    text = log.read_text()
    assert "release-gate: LoRA resolver active" in text
    assert "Resolved and loaded LoRA adapter 'approved' using ReleaseGateResolver" in text


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.parametrize(("name", "reason"), [
    ("undecided", "unsigned: no release.sig in undecided/"),
    ("rejected", "outcome REJECT"),
    ("tampered", "bad signature: changed since signing: adapter_model.safetensors"),
    ("unsigned", "unsigned: no release.sig in promoted/"),
    ("..", "unsafe name"),
])
def test_server_refuses_an_adapter_the_gate_did_not_approve(gated_server, name, reason):
    url, log = gated_server
    status, body = complete(url, name)
    assert status == 404
    assert body["error"]["type"] == "NotFoundError"
    assert body["error"]["message"].startswith(f"The model `{name}` does not exist.")
    assert f"release-gate refused LoRA adapter '{name}': {reason}" in log.read_text()


# --- serve-args: the serving gate without vLLM's runtime-updating flag ----------------------------


def test_serve_args_lists_only_verified_releases(tmp_path, adapter, gate_keys, capsys):
    release = tmp_path / "release"
    publish(release, "approved", adapter, gate_keys.private)
    publish(release, "rejected", adapter, gate_keys.private, outcome="REJECT")
    flip_last_byte(publish(release, "tampered", adapter, gate_keys.private, flat=True) / SAFETENSORS_FILE)
    code = main(["serve-args", str(release), "--public-key", str(gate_keys.public), "--base-model", BASE,
                 "--stage", str(tmp_path / "staged"), "--json"])
    out, err = capsys.readouterr()
    assert code == 0
    assert json.loads(out) == [{"name": "approved", "path": str((tmp_path / "staged" / "approved").resolve()),
                                "base_model_name": BASE}]
    assert "refused 'rejected': outcome REJECT" in err
    assert "refused 'tampered': bad signature: changed since signing: adapter_model.safetensors" in err
    assert "serving 'approved' from" in err and "signature verified" in err
    assert sorted(p.name for p in (tmp_path / "staged" / "approved").iterdir()) == sorted(
        p.name for p in (release / "approved" / "promoted").iterdir())
    shutil.rmtree(release / "approved")
    assert main(["serve-args", str(release), "--public-key", str(gate_keys.public)]) == 2
    assert "no release is approved" in capsys.readouterr().err


def test_serve_args_stage_by_default(tmp_path, adapter, gate_keys, capsys):
    release = tmp_path / "release"
    publish(release, "approved", adapter, gate_keys.private)
    assert main(["serve-args", str(release), "--public-key", str(gate_keys.public), "--json"]) == 0
    served = Path(json.loads(capsys.readouterr().out)[0]["path"])
    assert release not in served.parents and served.name == "approved"
    assert (served / SIGNATURE_FILE).read_bytes() == (release / "approved" / "promoted" / SIGNATURE_FILE).read_bytes()
    shutil.rmtree(served.parent)


def test_serve_args_replaces_an_earlier_staged_copy_whole(tmp_path, adapter, gate_keys, capsys):
    release, staged = tmp_path / "release", tmp_path / "staged"
    publish(release, "approved", adapter, gate_keys.private)
    args = ["serve-args", str(release), "--public-key", str(gate_keys.public), "--stage", str(staged)]
    assert main(args) == 0
    (staged / "approved" / "left-over.bin").write_bytes(b"from an earlier release")
    assert main(args) == 0
    assert "serving 'approved'" in capsys.readouterr().err
    assert sorted(p.name for p in (staged / "approved").iterdir()) == sorted(
        p.name for p in (release / "approved" / "promoted").iterdir())


def test_serve_args_needs_a_public_key_or_the_explicit_opt_out(tmp_path, adapter, capsys):
    release = tmp_path / "release"
    publish(release, "unsigned", adapter, None)
    publish(release, "rejected", adapter, None, outcome="REJECT")
    assert main(["serve-args", str(release)]) == 2
    assert "give --public-key (the gate's public key) or opt out of signatures explicitly with --allow-unsigned" in (
        capsys.readouterr().err)
    staged = tmp_path / "staged"
    assert main(["serve-args", str(release), "--allow-unsigned", "--base-model", BASE, "--stage", str(staged),
                 "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == [{"name": "unsigned", "path": str((staged / "unsigned").resolve()),
                                "base_model_name": BASE, "opt_out": "--allow-unsigned"}]
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all("--allow-unsigned" in line for line in lines), lines
    assert "UNVERIFIED (no public key): served only because of --allow-unsigned" in err


@pytest.mark.slow
@pytest.mark.vllm
def test_serve_args_start_a_server_with_no_load_endpoint(tmp_path, capsys):
    model_dir = fetch().model_dir
    adapter = smollm2_adapter(model_dir, tmp_path / "adapter", seed=12)
    release = tmp_path / "release"
    keys = key_pair(tmp_path / "keys")
    publish(release, "approved", adapter, keys.private)
    publish(release, "rejected", adapter, keys.private, outcome="REJECT")
    assert main(["serve-args", str(release), "--public-key", str(keys.public), "--base-model", str(model_dir),
                 "--stage", str(tmp_path / "staged")]) == 0
    args = capsys.readouterr().out.split()
    assert args[0] == "--lora-modules" and len(args) == 2
    with api_server(model_dir, tmp_path / "server.log", args=args, runtime_lora=False) as (url, _process):
        status, body = complete(url, "approved")
        assert status == 200 and body["model"] == "approved", body
        assert complete(url, "rejected")[0] == 404
        status, _ = post(f"{url}/v1/load_lora_adapter", {"lora_name": "smuggled", "lora_path": str(adapter)})
        assert status == 404  # the development-only endpoint does not exist
        assert complete(url, "smuggled")[0] == 404
