"""Calibration data: the ``calibration:`` section, reading and selecting rows, the overlap guard, tokens.

Everything about *which* tokens the sensitivity pass sees, kept apart from the pass itself
(:mod:`.calibration`): this part needs a tokenizer at most, never torch or hooks, and the pipeline's
checks (rows, overlap with the evaluation data) and the demo's trainer use it as well.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import BadInput
from ..files import check_input_file, read_jsonl_numbered
from ..validation import Count, Flag, Integer, NonNegativeInt, Section, Text


class CalibrationConfig(Section):
    """Where calibration examples come from and how they are turned into tokens (the ``calibration:`` section).

    ``separator`` is inserted between prompt and answer in the ``raw``
    template; ``chat`` wraps the prompt (or all but the last of ``messages``)
    in the tokenizer's chat template with a generation prompt, as vLLM does.
    """

    file: Path
    template: Literal["raw", "chat"] = "raw"
    prompt_field: Text = "prompt"
    answer_field: Text = "answer"
    messages_field: Text = "messages"
    separator: Text = ""
    n: Count = 128
    seed: Integer = 0
    shuffle: Flag = False
    offset: NonNegativeInt = 0
    batch_size: Count = 8
    max_length: Count = 1024

    def __init__(self, file: Path | str | None = None, /, **values: Any) -> None:
        """``CalibrationConfig(path, n=64)`` as well as ``CalibrationConfig(file=path, n=64)``."""
        super().__init__(**({"file": file} if file is not None else {}), **values)

    def selection(self) -> dict[str, Any]:
        """The fields that decide which tokens are seen (part of the cache key)."""
        return self.model_dump(mode="json", exclude={"file", "batch_size"})  # per-example values ignore batching


@dataclass(frozen=True)
class Example:
    """One calibration row: ``prompt`` is text (raw) or a message list (chat)."""

    index: int
    line: int
    prompt: str | list[dict[str, str]]
    answer: str


@dataclass(frozen=True)
class Encoded:
    """Token ids of prompt + answer (+EOS); the loss covers ids[n_prompt:]."""

    input_ids: list[int]
    n_prompt: int


def read_examples(cfg: CalibrationConfig) -> tuple[list[Example], list[int]]:
    """Parse and validate the JSONL file, then select ``n`` rows.

    Returns the selected examples and their row indices (for provenance).
    """
    path = check_input_file(Path(cfg.file), "calibration file")
    rows = read_jsonl_numbered(path)
    if not rows:
        raise BadInput(f"{path}: calibration file is empty")
    examples = [_parse_row(path, i, line_no, row, cfg) for i, (line_no, row) in enumerate(rows)]
    order = list(range(len(examples)))
    if cfg.shuffle:
        random.Random(cfg.seed).shuffle(order)
    chosen = order[cfg.offset : cfg.offset + cfg.n]
    if len(chosen) < cfg.n:
        raise BadInput(
            f"{path}: calibration needs {cfg.n} rows after offset {cfg.offset}, "
            f"but the file has {len(examples)} rows"
        )
    return [examples[i] for i in chosen], chosen


def _parse_row(path: Path, index: int, line_no: int, row: Any, cfg: CalibrationConfig) -> Example:
    where = f"{path}: line {line_no}"
    if not isinstance(row, dict):
        raise BadInput(f"{where}: expected a JSON object")
    if cfg.messages_field in row and cfg.prompt_field not in row:
        return _parse_messages(where, index, line_no, row[cfg.messages_field], cfg)
    for key in (cfg.prompt_field, cfg.answer_field):
        if key not in row:
            raise BadInput(f"{where}: missing field {key!r}")
        if not isinstance(row[key], str):
            raise BadInput(f"{where}: field {key!r} must be a string")
    if not row[cfg.answer_field].strip():
        raise BadInput(f"{where}: field {cfg.answer_field!r} is empty (nothing to compute a loss on)")
    return Example(index, line_no, row[cfg.prompt_field], row[cfg.answer_field])


def _parse_messages(where: str, index: int, line_no: int, messages: Any, cfg: CalibrationConfig) -> Example:
    if cfg.template != "chat":
        raise BadInput(f"{where}: {cfg.messages_field!r} rows need calibration.template: chat")
    valid = isinstance(messages, list) and len(messages) >= 2 and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    )
    if not valid:
        raise BadInput(f"{where}: {cfg.messages_field!r} must be a list of ≥2 {{role, content}} messages")
    if messages[-1]["role"] != "assistant":
        raise BadInput(f"{where}: the last message must be the assistant's answer")
    if not messages[-1]["content"].strip():
        raise BadInput(f"{where}: the assistant answer is empty (nothing to compute a loss on)")
    return Example(index, line_no, [dict(m) for m in messages[:-1]], messages[-1]["content"])


#: Text fields of evaluation rows compared against calibration prompts.
EVAL_TEXT_FIELDS = ("question", "prompt", "input", "text", "problem", "instruction")
#: Shorter evaluation texts are too generic to count as overlap.
MIN_OVERLAP_CHARS = 24


def normalize_text(text: str) -> str:
    """Case-, width- and whitespace-insensitive form used for overlap checks."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def check_no_overlap(examples: Sequence[Example], eval_files: Sequence[Path]) -> None:
    """Refuse calibration rows that contain an evaluation item's text.

    Calibrating on evaluation items would leak the test set into the edit and
    inflate the gate's evidence. An evaluation row overlaps when its
    normalized question/prompt text appears inside a normalized calibration
    prompt or answer.
    """
    haystacks = [
        (e, normalize_text(_example_text(e))) for e in examples
    ]
    for path in eval_files:
        for line_no, text in _eval_texts(Path(path)):
            needle = normalize_text(text)
            if len(needle) < MIN_OVERLAP_CHARS:
                continue
            for example, hay in haystacks:
                if needle in hay:
                    raise BadInput(
                        f"calibration row at line {example.line} overlaps evaluation item "
                        f"{path}: line {line_no} ({text[:60]!r}…); calibration and evaluation must be disjoint"
                    )


def _example_text(example: Example) -> str:
    prompt = example.prompt if isinstance(example.prompt, str) else "\n".join(m["content"] for m in example.prompt)
    return f"{prompt}\n{example.answer}"


def _eval_texts(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise BadInput(f"{path}: evaluation data file not found")
    return [(line_no, row[k]) for line_no, row in read_jsonl_numbered(path) if isinstance(row, dict)
            for k in EVAL_TEXT_FIELDS if isinstance(row.get(k), str)]


def encode(example: Example, tokenizer: Any, cfg: CalibrationConfig) -> Encoded:
    """Teacher-forcing ids: prompt (with BOS as the tokenizer adds it) + answer + EOS."""
    if cfg.template == "chat":
        messages = example.prompt if isinstance(example.prompt, list) else [
            {"role": "user", "content": example.prompt}
        ]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        prompt_ids = tokenizer(str(example.prompt) + cfg.separator)["input_ids"]
    answer_ids = tokenizer(example.answer, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        answer_ids = [*answer_ids, tokenizer.eos_token_id]
    budget = cfg.max_length - len(answer_ids)
    if budget < 1:  # keep one prompt token so the first answer token has a context
        answer_ids, budget = answer_ids[: cfg.max_length - 1], 1
    prompt_ids = prompt_ids[-budget:] if len(prompt_ids) > budget else prompt_ids
    return Encoded(list(prompt_ids) + list(answer_ids), len(prompt_ids))


def length_buckets(encoded: Sequence[Encoded], batch_size: int) -> list[list[int]]:
    """Batches of example positions with similar lengths (less padding)."""
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i].input_ids), i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
