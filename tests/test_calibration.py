"""Hook sensitivities vs autograd on a dense ΔW, and batched vs batch-size-1 (SPEC §12)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from release_gate.errors import BadInput
from release_gate.surgery.adapter import load_adapter
from release_gate.surgery.calibration import (
    CalibrationConfig,
    Encoded,
    check_no_overlap,
    length_buckets,
    per_example_sensitivities,
    read_examples,
)
from release_gate.surgery.edit import decompose

from factories import tiny_llama


def merged_float64_model(adapter):
    model = tiny_llama(dtype=torch.float64)
    named = dict(model.named_modules())
    with torch.no_grad():
        for m in adapter.modules.values():
            named[m.name].weight += m.scale * m.B.double() @ m.A.double()
    return model.requires_grad_(False)


def random_examples(n: int, seed: int = 0) -> list[Encoded]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(6, 20, (1,), generator=gen))
        n_prompt = int(torch.randint(1, length - 1, (1,), generator=gen))
        out.append(Encoded(torch.randint(1, 97, (length,), generator=gen).tolist(), n_prompt))
    return out


def autograd_reference(model, example: Encoded, module_name: str, spectrum) -> np.ndarray:
    """g = u_kᵀ (∂L/∂ΔW) v_k with ΔW a dense leaf parameter and full-vocab logits."""
    module = dict(model.named_modules())[module_name]
    delta = torch.zeros_like(module.weight, requires_grad=True)
    original = module.forward
    module.forward = lambda x: torch.nn.functional.linear(x, module.weight + delta, module.bias)
    try:
        ids = torch.tensor([example.input_ids])
        logits = model(input_ids=ids).logits[0]
        start = example.n_prompt
        loss = torch.nn.functional.cross_entropy(logits[start - 1 : -1], ids[0, start:])
        (grad,) = torch.autograd.grad(loss, delta)
    finally:
        module.forward = original
    return torch.einsum("ik,ij,jk->k", spectrum.U, grad, spectrum.V).numpy()


@pytest.fixture(scope="module")
def setup(tiny_adapter_dir):
    adapter = load_adapter(tiny_adapter_dir)
    spectra = decompose(adapter.select())
    return adapter, spectra, merged_float64_model(adapter)


def test_hooks_equal_autograd_per_example(setup):
    adapter, spectra, model = setup
    examples = random_examples(5)
    batched = per_example_sensitivities(model, examples, spectra, batch_size=3)
    assert set(batched) == set(spectra) and len(spectra) == 4
    for name, spectrum in spectra.items():
        assert batched[name].shape == (5, spectrum.rank)
        for i, example in enumerate(examples):
            reference = autograd_reference(model, example, name, spectrum)
            np.testing.assert_allclose(batched[name][i], reference, rtol=1e-5, atol=1e-9 * np.abs(reference).max())


def test_batched_equals_batch_size_one(setup):
    _, spectra, model = setup
    examples = random_examples(7, seed=3)
    batched = per_example_sensitivities(model, examples, spectra, batch_size=4)
    single = per_example_sensitivities(model, examples, spectra, batch_size=1)
    for name in spectra:
        np.testing.assert_allclose(batched[name], single[name], rtol=1e-5, atol=1e-12)


def test_float32_hooks_close_to_float64(setup, tiny_adapter_dir):
    adapter, spectra, model64 = setup
    model32 = tiny_llama(dtype=torch.float32)
    named = dict(model32.named_modules())
    with torch.no_grad():
        for m in adapter.modules.values():
            named[m.name].weight += m.scale * m.B @ m.A
    model32.requires_grad_(False)
    examples = random_examples(4, seed=9)
    g32 = per_example_sensitivities(model32, examples, spectra, batch_size=4)
    g64 = per_example_sensitivities(model64, examples, spectra, batch_size=4)
    for name in spectra:
        np.testing.assert_allclose(g32[name], g64[name], rtol=1e-3, atol=1e-6 * np.abs(g64[name]).max())


def test_no_parameter_gets_a_gradient(setup):
    _, spectra, model = setup
    per_example_sensitivities(model, random_examples(2), spectra, batch_size=2)
    assert all(p.grad is None for p in model.parameters())


def test_length_buckets_group_similar_lengths():
    examples = [Encoded([1] * n, 1) for n in (9, 2, 7, 3, 8, 1)]
    assert length_buckets(examples, 2) == [[5, 1], [3, 2], [4, 0]]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_selection_records_indices(tmp_path):
    data = write_jsonl(tmp_path / "c.jsonl", [{"prompt": f"q{i}", "answer": f"a{i}"} for i in range(10)])
    examples, indices = read_examples(CalibrationConfig(data, n=3, offset=2))
    assert indices == [2, 3, 4] and examples[0].prompt == "q2"
    shuffled, idx = read_examples(CalibrationConfig(data, n=4, shuffle=True, seed=7))
    assert idx == read_examples(CalibrationConfig(data, n=4, shuffle=True, seed=7))[1]
    assert idx != [0, 1, 2, 3] and [e.index for e in shuffled] == idx


@pytest.mark.parametrize(
    "content,cfg,message",
    [
        (None, {}, "calibration file not found"),
        ("", {}, "calibration file is empty"),
        ('{"prompt": "a", "answer": "b"}\n{"prompt": \n', {"n": 1}, "line 2 is not valid JSON"),
        ('{"prompt": "a"}\n', {"n": 1}, "line 1: missing field 'answer'"),
        ('{"question": "a", "answer": "b"}\n', {"n": 1}, "line 1: missing field 'prompt'"),
        ('{"prompt": "a", "answer": "  "}\n', {"n": 1}, "line 1: field 'answer' is empty"),
        ('{"prompt": "a", "answer": "b"}\n', {"n": 5}, "needs 5 rows after offset 0, but the file has 1 rows"),
        ('[1, 2]\n', {"n": 1}, "line 1: expected a JSON object"),
        ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}\n',
         {"n": 1, "template": "chat"}, "assistant answer is empty"),
    ],
)
def test_calibration_bad_inputs(tmp_path, content, cfg, message):
    path = tmp_path / "calib.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(BadInput, match=message) as info:
        read_examples(CalibrationConfig(path, **cfg))
    assert str(path) in str(info.value)
    if content is not None:
        assert path.read_text() == content  # the user's file is untouched


def test_overlap_with_evaluation_items_is_refused(tmp_path):
    question = "Where would you put a plate after washing it with soap and water?"
    calib = write_jsonl(tmp_path / "calib.jsonl", [
        {"prompt": "Question: What is the tallest mountain on the planet Earth, by elevation?\nAnswer:", "answer": " A"},
        {"prompt": f"Question:   {question.upper()}\nA. cupboard\nAnswer:", "answer": " A"},
    ])
    evaluation = write_jsonl(tmp_path / "eval.jsonl", [{"question": "Unrelated but long enough question text?"},
                                                        {"question": question}])
    examples, _ = read_examples(CalibrationConfig(calib, n=2))
    with pytest.raises(BadInput, match=r"line 2 overlaps evaluation item .*eval\.jsonl: line 2"):
        check_no_overlap(examples, [evaluation])
    check_no_overlap(examples[:1], [evaluation])  # disjoint rows pass
    with pytest.raises(BadInput, match="evaluation data file not found"):
        check_no_overlap(examples, [tmp_path / "missing.jsonl"])
