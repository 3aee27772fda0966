"""Shared fixtures: offline environment, tiny real models and adapters."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from factories import Keys, key_pair, make_adapter, save_tiny_llama, tiny_llama  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_adapter_dir(tmp_path_factory) -> Path:
    return make_adapter(tiny_llama(), tmp_path_factory.mktemp("adapter") / "lora")


@pytest.fixture(scope="session")
def gate_keys(tmp_path_factory) -> Keys:
    """The gate's signing key and its public half, made for the session (no network, no Sigstore)."""
    return key_pair(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def base_config(tmp_path, tiny_adapter_dir, tiny_model_dir) -> dict:
    """A small valid run config (as a mapping) on the tiny model and adapter; tests change one thing."""
    calib = tmp_path / "calib.jsonl"
    calib.write_text('{"prompt": "a b c d", "answer": "e"}\n' * 4)
    return {
        "base_model": str(tiny_model_dir), "adapter": str(tiny_adapter_dir),
        "output": {"dir": str(tmp_path / "run")}, "calibration": {"file": str(calib), "n": 4},
        "targets": [{"task": "commonsense_qa", "metric": "acc", "limit": 4}],
        "guards": [{"task": "ifeval", "metric": "prompt_level_strict_acc", "max_drop": 0.05, "limit": 2}],
    }


@pytest.fixture
def file_store(tmp_path, monkeypatch) -> str:
    """A local MLflow file store (MLflow ≥ 3.7 wants an explicit opt-in for it)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return (tmp_path / "mlruns").as_uri()
