"""Evaluation on one real vLLM-CPU engine: canary, HF+PEFT-equal scores, resume, offline tasks."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from lm_eval.api.instance import Instance

from release_gate.assets import fetch
from release_gate.constants import LLAMA_PROJECTIONS
from release_gate.evaluation import canary
from release_gate.evaluation.backend import SharedEngineLM
from release_gate.evaluation.engine import Arm, Engine, EngineSettings
from release_gate.evaluation.in_process import VllmBackend
from release_gate.evaluation.runner import TaskRequest, items_from_samples, resolve_task
from release_gate.evaluation.scoring import evaluate
from release_gate.evaluation.store import ItemStore
from release_gate.evaluation.tasks import prepare_environment, task_manager, write_offline_tasks
from release_gate.surgery.adapter import load_adapter
from release_gate.surgery.edit import decompose, make_variant, write_variant
from release_gate.surgery.policies import RandomIndex

from factories import smollm2_adapter

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    assets = fetch()
    prepare_environment(assets)
    root = tmp_path_factory.mktemp("evaluation")
    baseline_dir = smollm2_adapter(assets.model_dir, root / "baseline", seed=5)
    adapter = load_adapter(baseline_dir)
    spectra = decompose(adapter.select())
    variant = make_variant(adapter, spectra, RandomIndex(name="random_index@0", seed=0, amp_factor=2.0, sup_factor=0.2))
    variant_dir = write_variant(variant, adapter, root / "random_index@0", str(assets.model_dir), None)
    arms = [Arm.base(), Arm.from_adapter("baseline", baseline_dir), Arm.from_adapter("random_index@0", variant_dir)]
    # float32: the scores are compared with lm-eval's hf backend in float32 below. vLLM's multi-LoRA kernels (the
    # GPU path, where LoRA ids must never go stale); the merged path has its own module, test_lora_path
    engine = Engine(EngineSettings.for_arms(str(assets.model_dir), arms, max_model_len=1024, dtype="float32",
                                            lora_path="multi_lora"))
    manager = task_manager([write_offline_tasks(assets, root / "tasks")])
    yield {"assets": assets, "arms": {a.name: a for a in arms}, "engine": engine, "manager": manager, "root": root}
    engine.close()


def test_engine_sizes_lora_slots_to_the_arms(stack):
    settings = stack["engine"].settings
    assert settings.max_lora_rank == 16 and settings.max_loras == 2
    assert set(settings.lora_target_modules) == set(LLAMA_PROJECTIONS)


def test_canary_sees_the_adapter_and_the_edit(stack):
    arms = stack["arms"]
    report = canary.check(stack["engine"], arms["base"], arms["baseline"], [arms["random_index@0"]])
    assert report.applied and report.identical_to_baseline == ()


def loglikelihood_requests():
    mc = "Question: Where do you keep milk?\nA. fridge\nB. oven\nC. shoe\nAnswer:"
    pairs = [("Question: Where do you keep milk?\nAnswer:", " In the fridge"),
             ("The capital of France is", " Paris"),
             ("2 + 2 =", " 4"),
             ("Write a haiku about the sea.\n", "Waves fold into foam"),
             *((mc, f" {letter}") for letter in "ABC")]  # shared context, one-token continuations
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def test_scores_equal_hf_peft_and_ids_never_go_stale(stack):
    from lm_eval.models.huggingface import HFLM

    arms = stack["arms"]
    lm = SharedEngineLM(stack["engine"], arms["base"])
    ours, ours_greedy = {}, {}
    for name in ("baseline", "random_index@0", "baseline"):  # switching back must not serve a stale adapter
        answers = lm.for_arm(arms[name]).loglikelihood(loglikelihood_requests())
        scores = np.array([s for s, _ in answers])
        ours_greedy[name] = [g for _, g in answers]
        if name in ours:
            np.testing.assert_allclose(scores, ours[name], atol=1e-6)
        ours[name] = scores
    assert np.abs(ours["baseline"] - ours["random_index@0"]).max() > 1e-2
    for name in ("baseline", "random_index@0"):
        reference = HFLM(pretrained=str(stack["assets"].model_dir), peft=str(arms[name].adapter),
                         dtype="float32", device="cpu", batch_size=4)
        answers = reference.loglikelihood(loglikelihood_requests())
        np.testing.assert_allclose(ours[name], np.array([s for s, _ in answers]), atol=1e-3)
        assert ours_greedy[name] == [g for _, g in answers]


def test_evaluate_resumes_without_recomputing(stack, monkeypatch):
    arms = list(stack["arms"].values())
    lm = SharedEngineLM(stack["engine"], arms[0])
    tasks = [resolve_task(TaskRequest("commonsense_qa", "acc", limit=6), stack["manager"])]
    store = ItemStore(stack["root"] / "store")
    first = evaluate(VllmBackend.around(lm), arms, tasks, store)
    assert {k: len(v) for k, v in first.items()} == {(a.name, "commonsense_qa"): 6 for a in arms}
    assert all(set(item.metrics) == {"acc,none"} for items in first.values() for item in items)
    # "crash": one (arm, task)'s items are lost; only that pair may touch the engine again
    shutil.rmtree(store.directory(arms[2], "commonsense_qa", tasks[0].key, lm.engine.settings.key()))
    calls = []
    original = type(stack["engine"]).generate
    monkeypatch.setattr(type(stack["engine"]), "generate",
                        lambda self, prompts, params, owners: calls.append(owners[0].name) or original(self, prompts, params, owners))
    second = evaluate(VllmBackend.around(lm), arms, tasks, store)
    assert set(calls) == {"random_index@0"}
    assert [i.metrics for i in second[("random_index@0", "commonsense_qa")]] == [
        i.metrics for i in first[("random_index@0", "commonsense_qa")]]


def test_offline_generation_tasks_run(stack):
    base = stack["arms"]["base"]
    lm = SharedEngineLM(stack["engine"], base)
    tasks = [
        resolve_task(TaskRequest("ifeval", "prompt_level_strict_acc", limit=3, max_gen_toks=48), stack["manager"]),
        resolve_task(TaskRequest("gsm8k", "exact_match,flexible-extract", limit=2, max_gen_toks=48), stack["manager"]),
    ]
    scores = evaluate(VllmBackend.around(lm), [base], tasks, ItemStore(stack["root"] / "gen-store"))
    ifeval = scores[("base", "ifeval")]
    assert len(ifeval) == 3 and all("prompt_level_strict_acc,none" in i.metrics for i in ifeval)
    assert any(i.response.strip() for i in ifeval)  # real generations (an instruct model may stop at once)
    gsm8k = scores[("base", "gsm8k")]
    assert len(gsm8k) == 2 and all("exact_match,strict-match" in i.metrics for i in gsm8k)


def test_cross_arm_batching_matches_sequential_with_fewer_engine_calls(stack, monkeypatch):
    arms = list(stack["arms"].values())
    lm = SharedEngineLM(stack["engine"], arms[0])
    tasks = [resolve_task(TaskRequest("commonsense_qa", "acc", limit=4), stack["manager"]),
             resolve_task(TaskRequest("ifeval", "prompt_level_loose_acc", limit=2, max_gen_toks=24), stack["manager"])]
    calls = []
    original = type(stack["engine"]).generate
    monkeypatch.setattr(type(stack["engine"]), "generate",
                        lambda self, prompts, params, owners: calls.append(len(prompts)) or original(self, prompts, params, owners))
    batched = evaluate(VllmBackend.around(lm, cross_arm=True), arms, tasks, ItemStore(stack["root"] / "batched"))
    batched_calls, calls[:] = len(calls), []
    sequential = evaluate(VllmBackend.around(lm, cross_arm=False), arms, tasks, ItemStore(stack["root"] / "sequential"))
    assert batched_calls < len(calls)
    for key, items in sequential.items():
        fields = [(i.doc_id, i.metrics, i.response, i.choice_logprobs) for i in items]
        assert [(i.doc_id, i.metrics, i.response, i.choice_logprobs) for i in batched[key]] == fields


def test_requests_are_built_once_per_run_and_score_as_simple_evaluate(stack, monkeypatch):
    from lm_eval import simple_evaluate

    arms = list(stack["arms"].values())
    requests = [TaskRequest("commonsense_qa", "acc", limit=5),
                TaskRequest("ifeval", "prompt_level_loose_acc", limit=2, max_gen_toks=24)]
    tasks = [resolve_task(r, stack["manager"]) for r in requests]
    builds = []
    for task in tasks:
        build = task.task.build_all_requests
        monkeypatch.setattr(task.task, "build_all_requests", lambda build=build, **kw: builds.append(1) or build(**kw))
    lm = SharedEngineLM(stack["engine"], arms[0])
    ours = evaluate(VllmBackend.around(lm, cross_arm=False), arms, tasks, ItemStore(stack["root"] / "built-once"))
    assert len(builds) == len(tasks)  # not once per arm
    for arm in arms:  # lm-eval's own path: a fresh task, fresh requests for every (arm, task)
        for request in requests:
            chosen = sorted(i.doc_id for i in ours[(arm.name, request.name)])  # the sampled items, not the first n
            result = simple_evaluate(model=lm.for_arm(arm), tasks=[request.name], task_manager=stack["manager"],
                                     samples={request.name: chosen}, gen_kwargs=request.gen_kwargs(),
                                     bootstrap_iters=0)
            reference = items_from_samples(result["samples"][request.name])
            assert sorted(ours[(arm.name, request.name)], key=lambda i: i.doc_id) == reference


def test_chat_template_renders_stored_prompts_and_keys_the_store(stack):
    base = stack["arms"]["base"]
    lm = SharedEngineLM(stack["engine"], base)
    request = TaskRequest("ifeval", "prompt_level_strict_acc", limit=2, max_gen_toks=16)
    store = ItemStore(stack["root"] / "chat")
    evaluate(VllmBackend.around(lm), [base], [resolve_task(request, stack["manager"])], store)
    chat = resolve_task(dataclasses.replace(request, chat_template=True), stack["manager"])
    evaluate(VllmBackend.around(lm), [base], [chat], store)  # must not reuse the plain items
    stored = {path: [json.loads(line)["prompt"] for line in path.read_text().splitlines()]
              for path in store.root.rglob("ifeval-*/*.jsonl")}
    assert len(stored) == 2
    templated = [prompts for prompts in stored.values() if all("<|im_start|>" in p for p in prompts)]
    plain = [prompts for prompts in stored.values() if not any("<|im_start|>" in p for p in prompts)]
    assert len(templated) == len(plain) == 1 and len(templated[0]) == 2
    assert templated[0][0].rstrip().endswith("<|im_start|>assistant")  # the generation prompt follows the user turn


def test_a_larger_limit_evaluates_only_the_new_items_in_sampled_order(stack, monkeypatch):
    """Items come in a seeded random order, so 3 then 7 items: the second run scores exactly the 4 new ones."""
    from release_gate.evaluation.runner import BuiltTask

    arms = list(stack["arms"].values())
    lm = SharedEngineLM(stack["engine"], arms[0])
    small = resolve_task(TaskRequest("commonsense_qa", "acc", limit=3), stack["manager"], sample_seed=11)
    large = resolve_task(TaskRequest("commonsense_qa", "acc", limit=7), stack["manager"], sample_seed=11)
    assert small.key == large.key and small.doc_ids() == large.doc_ids()[:3] != [0, 1, 2]
    store = ItemStore(stack["root"] / "grows")
    scored = []
    original = BuiltTask.score
    monkeypatch.setattr(BuiltTask, "score",
                        lambda self, model, ids: scored.append((model.arm.name, tuple(ids))) or original(self, model, ids))
    first = evaluate(VllmBackend.around(lm), arms, [small], store)
    assert sorted(n for _, ids in scored for n in [len(ids)]) == [3] * len(arms)
    scored.clear()
    second = evaluate(VllmBackend.around(lm), arms, [large], store)
    assert {arm for arm, _ in scored} == {a.name for a in arms}
    assert all(set(ids) == set(large.doc_ids()[3:]) for _, ids in scored)
    for arm in arms:
        assert [i.doc_id for i in second[(arm.name, "commonsense_qa")]] == large.doc_ids()
        assert second[(arm.name, "commonsense_qa")][:3] == first[(arm.name, "commonsense_qa")]


def test_backend_is_registered_with_lm_eval():
    from lm_eval.api.registry import get_model

    assert get_model("release-gate") is SharedEngineLM
