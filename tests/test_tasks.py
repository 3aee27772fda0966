"""Offline task resolution and metric checks (no engine needed)."""

from __future__ import annotations

import pytest

from release_gate.assets import fetch
from release_gate.errors import BadInput
from release_gate.evaluation.engine import lora_rank_slot
from release_gate.evaluation.runner import TaskRequest, resolve_task
from release_gate.evaluation.tasks import prepare_environment, task_manager, write_offline_tasks


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    assets = fetch()
    prepare_environment(assets)
    return task_manager([write_offline_tasks(assets, tmp_path_factory.mktemp("tasks"))])


def test_offline_tasks_load_from_the_assets(manager):
    csqa = resolve_task(TaskRequest("commonsense_qa", "acc"), manager)
    assert csqa.metric_key == "acc,none" and len(csqa.task.eval_docs) == 1221
    ifeval = resolve_task(TaskRequest("ifeval", "prompt_level_strict_acc"), manager)
    assert len(ifeval.task.eval_docs) == 541
    gsm8k = resolve_task(TaskRequest("gsm8k", "exact_match,strict-match"), manager)
    assert len(gsm8k.task.eval_docs) == 1319
    cot = resolve_task(TaskRequest("gsm8k_cot", "exact_match,strict-match"), manager)
    assert cot.task.config.num_fewshot == 8  # fixed exemplars: no train split needed offline


def test_task_key_leaves_the_limit_out(manager):
    """Stored items serve every limit (issue #10): the key changes with what scores an item, not how many."""
    a = resolve_task(TaskRequest("commonsense_qa", "acc", limit=10), manager)
    b = resolve_task(TaskRequest("commonsense_qa", "acc", limit=20), manager)
    assert a.key == b.key and a.doc_ids() == b.doc_ids()[:10]
    shots = resolve_task(TaskRequest("commonsense_qa", "acc", limit=10, num_fewshot=2), manager)
    assert shots.key != a.key


def test_resolved_task_carries_the_request_settings(manager):
    ifeval = resolve_task(TaskRequest("ifeval", "prompt_level_strict_acc", limit=4, max_gen_toks=48), manager)
    assert ifeval.task.config.generation_kwargs["max_gen_toks"] == 48  # what every arm is scored with
    assert ifeval.task.config.num_fewshot == 0
    plain = resolve_task(TaskRequest("ifeval", "prompt_level_strict_acc", limit=4), manager)
    assert plain.task.config.generation_kwargs["max_gen_toks"] != 48 and plain.key != ifeval.key


@pytest.mark.parametrize(
    "request_,message",
    [
        (TaskRequest("no_such_task", "acc"), "unknown task 'no_such_task'"),
        (TaskRequest("commonsense_qa", "exact_match"), "does not produce metric 'exact_match'"),
        (TaskRequest("gsm8k", "exact_match"), "ambiguous: name one of exact_match,strict-match"),
        (TaskRequest("gsm8k", "exact_match,loose"), "has no filter 'loose'"),
    ],
)
def test_bad_task_requests_name_the_problem(manager, request_, message):
    with pytest.raises(BadInput, match=message):
        resolve_task(request_, manager)


def test_lora_rank_slots():
    assert [lora_rank_slot(r) for r in (1, 2, 8, 9, 16, 300, 512)] == [1, 8, 8, 16, 16, 320, 512]
    with pytest.raises(BadInput, match="above vLLM's maximum LoRA rank 512"):
        lora_rank_slot(513)


def test_humaneval_needs_explicit_code_execution(manager, tmp_path):
    with pytest.raises(BadInput, match="executes model-written code: it runs only with allow_code_execution: true"):
        resolve_task(TaskRequest("humaneval", "pass@1"), manager)
    assets = fetch()
    allowed = task_manager([write_offline_tasks(assets, tmp_path / "tasks", allow_code_execution=True)])
    humaneval = resolve_task(TaskRequest("humaneval", "pass@1"), allowed)
    docs = list(humaneval.task.eval_docs)
    assert len(docs) == 164 and humaneval.metric_key == "pass@1,none"
    process = humaneval.task.config.process_results
    assert process(docs[0], [docs[0]["canonical_solution"]]) == {"pass@1": 1.0}  # really executed
    assert process(docs[0], ["    return None\n"]) == {"pass@1": 0.0}


def test_item_response_is_the_chosen_choice_for_multiple_choice():
    from release_gate.evaluation.runner import items_from_samples

    choices = [("Q: …\nAnswer:", " A"), ("Q: …\nAnswer:", " B"), ("Q: …\nAnswer:", " C")]
    sample = {"doc_id": 3, "target": "B", "arguments": choices, "metrics": ["acc"], "acc": 1.0,
              "filtered_resps": [(-2.0, False), (-0.5, True), (-3.0, False)]}
    [item] = items_from_samples([sample])
    assert item.response == "B" and item.metrics == {"acc,none": 1.0} and item.prompt.startswith("Q:")
    assert item.choice_logprobs == [-2.0, -0.5, -3.0]
    generated = {"doc_id": 4, "target": "x", "arguments": [("Write.", {"until": []})], "metrics": ["acc"],
                 "acc": 0.0, "filtered_resps": ["a poem"]}
    assert items_from_samples([generated])[0].response == "a poem"
    assert items_from_samples([generated])[0].choice_logprobs is None


def test_a_task_written_by_another_environment_names_its_missing_include(tmp_path):
    """A shared cache keeps task YAMLs whose include points into a virtualenv that is gone: lm-eval says only
    "unknown task"; the error names the file and the include it lacks."""
    assets = fetch()
    directory = write_offline_tasks(assets, tmp_path / "tasks")
    path = directory / "ifeval.yaml"
    gone = tmp_path / "old-venv" / "lm_eval" / "tasks" / "ifeval" / "ifeval.yaml"
    text = path.read_text()
    path.write_text(text.replace(text.splitlines()[0], f"include: {gone}", 1))
    with pytest.raises(BadInput) as error:
        resolve_task(TaskRequest("ifeval", "prompt_level_strict_acc"), task_manager([directory]))
    assert str(error.value).startswith(f"{path}: its include {gone} does not exist")
    assert "re-run `release-gate demo`" in str(error.value)
