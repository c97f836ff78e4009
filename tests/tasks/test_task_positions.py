"""Tasks a researcher brings: answers at several positions, per-prompt data, numeric outputs,
a tracr-style output vocabulary (d_vocab_out != d_vocab)."""

from __future__ import annotations

import pytest
import torch
import transformer_lens.patching as tlp
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuitkit import Task, discover, exact_edge_patching
from circuitkit.patching import activation_patching
from circuitkit.patching.engine import prepare_runs
from circuitkit.tasks import OutOfVocabularyError, TaskError
from circuitkit.tasks.metrics import final_logits, normalized


def tracr_like(seed: int = 0, d_vocab: int = 5, d_vocab_out: int = 6) -> HookedTransformer:
    """Like a tracr-compiled model: 5 input tokens, 6 output classes, no tokenizer."""
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, d_head=4, n_heads=2, d_mlp=None, attn_only=True,
                                  d_vocab=d_vocab, d_vocab_out=d_vocab_out, n_ctx=8, act_fn="relu",
                                  normalization_type=None, seed=seed, device="cpu", model_name="tracr-like",
                                  initializer_range=0.5)
    return HookedTransformer(cfg).eval()


def reverse_task(n: int = 4, seq: int = 5, reduce: str = "mean", metric: str = "logit_diff", seed: int = 0) -> Task:
    """A ``reverse``-style task: every position after the first three is scored, the answer at
    each is an output class (5 is an output class only, no input token)."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 5, (n, seq), generator=g)
    corrupted = torch.randint(0, 5, (n, seq), generator=g)
    pos = torch.tensor([[2, 3, 4]] * n)
    pos[0, 2] = -1  # prompt 0 is scored at two positions only
    answers = torch.randint(0, 6, (n, 3), generator=g)
    wrong = (answers + 1) % 6
    return Task("reverse", clean, corrupted, answers, wrong, answer_pos=pos, metric=metric, position_reduce=reduce)


def slow_logit_diff(logits: torch.Tensor, task: Task) -> torch.Tensor:
    out = []
    for i in range(len(task)):
        vals = [logits[i, p, task.answers[i, j, 0]] - logits[i, p, task.wrong_answers[i, j, 0]]
                for j, p in enumerate(task.answer_pos[i].tolist()) if p >= 0]
        total = sum(vals)
        out.append(total / len(vals) if task.position_reduce == "mean" else total)
    return torch.stack(out)


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_multi_position_metric_equals_a_loop_over_positions(reduce):
    task = reverse_task(reduce=reduce)
    logits = torch.randn(len(task), 5, 6)
    torch.testing.assert_close(task.per_prompt(logits), slow_logit_diff(logits, task))
    assert task.multi_position and not task.reads_answer_position_only
    # accuracy: the share (mean) / count (sum) of positions whose top class is the answer
    hits = logits.argmax(-1).gather(1, task.answer_pos.clamp(min=0)) == task.answers[..., 0]
    hits = hits & (task.answer_pos >= 0)
    expected = hits.sum(-1).float() / ((task.answer_pos >= 0).sum(-1) if reduce == "mean" else 1)
    torch.testing.assert_close(task.with_metric("accuracy").per_prompt(logits), expected)


def test_multi_position_shapes_are_checked():
    task = reverse_task()
    with pytest.raises(TaskError, match="answers cover 2 positions per prompt but answer_pos lists 3"):
        Task("r", task.clean, task.corrupted, task.answers[:, :2], task.wrong_answers, answer_pos=task.answer_pos)
    pos = task.answer_pos.clone()
    pos[1] = -1
    with pytest.raises(TaskError, match="prompt 1 has no answer position"):
        Task("r", task.clean, task.corrupted, task.answers, task.wrong_answers, answer_pos=pos)
    with pytest.raises(TaskError, match="position_reduce must be 'mean' or 'sum'"):
        reverse_task(reduce="max")
    with pytest.raises(TaskError, match="logit_diff' compares answers with wrong answers, but none"):
        Task("r", task.clean, task.corrupted, task.answers, answer_pos=task.answer_pos)
    # without wrong answers the log-probability metric works
    Task("r", task.clean, task.corrupted, task.answers, answer_pos=task.answer_pos, metric="answer_logprob")


def test_d_vocab_out_checks_answers_and_d_vocab_checks_tokens():
    model = tracr_like()
    task = reverse_task()
    assert int(task.answers.max()) == 5  # an output class with no input token
    task.check_model(model)  # answers checked against d_vocab_out = 6, not d_vocab = 5
    too_big = task.answers.clone()
    too_big[1, 0, 0] = 6
    bad = Task("r", task.clean, task.corrupted, too_big, task.wrong_answers, answer_pos=task.answer_pos)
    with pytest.raises(OutOfVocabularyError, match=r"answer of prompt 1 has token id 6, outside model 'tracr-like'"):
        bad.check_model(model)
    with pytest.raises(OutOfVocabularyError, match="answer token id 6 is outside the model's 6 output logits"):
        bad.score(model(bad.clean))  # never a raw IndexError at scoring time
    clean = task.clean.clone()
    clean[2, 1] = 5  # 5 is an output class, not an input token
    with pytest.raises(OutOfVocabularyError, match=r"clean prompt 2 has token id 5, outside model 'tracr-like'.*size 5"):
        Task("r", clean, task.corrupted, task.answers, task.wrong_answers, answer_pos=task.answer_pos).check_model(model)
    with pytest.raises(OutOfVocabularyError, match=r"answer of prompt 1 has token id 6, outside the output vocabulary"):
        Task("r", task.clean, task.corrupted, too_big, task.wrong_answers, answer_pos=task.answer_pos,
             d_vocab=5, d_vocab_out=6)  # refused when built, given the sizes


def test_multi_position_exact_patching_matches_transformer_lens():
    model = tracr_like(seed=1)
    task = reverse_task(n=3)
    runs = prepare_runs(model, task, "denoise", [], [])
    with torch.no_grad():
        _, source_cache = model.run_with_cache(runs.source_tokens)
    expected = tlp.get_act_patch_attn_head_out_by_pos(model, runs.base_tokens, source_cache, runs.metric())
    scores = activation_patching(model, task, "head_out", by_pos=True, progress=False)
    torch.testing.assert_close(scores.meta["grid"], expected.cpu(), atol=1e-4, rtol=0)
    assert expected.abs().max() > 1e-2


def test_tracr_like_multi_position_task_runs_through_discover_with_exact_patching():
    model = tracr_like(seed=2)
    task = reverse_task(n=4)
    circuit = discover(model, task, "exact", target=0.9, ablation="corrupted", route_cap=False)
    # the circuit's scores are the exact effects on every answer position, and it reaches the target
    scores = exact_edge_patching(model, task, ablation="corrupted", progress=False)
    kept = circuit.scores("edge")
    torch.testing.assert_close(kept.values, scores.subset(kept.labels).values)
    assert scores.values.abs().max() > 1e-3
    assert circuit.meta["faithfulness"] >= 0.9 and 0 < len(circuit.edges) < len(scores)


def _data_logit_diff(logits, task):
    last = final_logits(logits, task)
    rows = torch.arange(len(last))
    return last[rows, task.data["right"]] - last[rows, task.data["wrong"]]


def test_metric_reading_task_data_survives_subset_and_batching(tiny_model):
    """A metric that reads per-prompt data from ``task.data`` equals the built-in one under exact
    edge patching, which repeats the prompts (``task.subset``); a closure over the same values
    does not line up with the repeated rows."""
    g = torch.Generator().manual_seed(0)
    v = tiny_model.cfg.d_vocab
    clean, corrupted = torch.randint(0, v, (3, 6), generator=g), torch.randint(0, v, (3, 6), generator=g)
    right, wrong = torch.randint(0, v, (3,), generator=g), torch.randint(0, v, (3,), generator=g)
    builtin = Task("t", clean, corrupted, right, wrong)
    carried = Task("t", clean, corrupted, right, wrong, metric=_data_logit_diff, data={"right": right, "wrong": wrong})
    edges = ["a0.h0->a1.h1<q>", "a0.h2->m1", "input->a0.h3<v>"]
    ours = exact_edge_patching(tiny_model, carried, edges, ablation="corrupted", progress=False)
    ref = exact_edge_patching(tiny_model, builtin, edges, ablation="corrupted", progress=False)
    torch.testing.assert_close(ours.values, ref.values)
    sub = carried.subset([2, 0, 2])
    assert sub.data["right"].tolist() == [int(right[2]), int(right[0]), int(right[2])]

    def closure(logits, task):
        last = final_logits(logits, task)
        return last[torch.arange(len(last)), right] - last[torch.arange(len(last)), wrong]

    with pytest.raises(IndexError, match="shape mismatch"):
        exact_edge_patching(tiny_model, builtin.with_metric(closure), edges, ablation="corrupted", progress=False)
    with pytest.raises(TaskError, match=r"data\['right'\] has shape \(2,\); per-prompt data needs a first dimension of 3"):
        Task("t", clean, corrupted, right, wrong, data={"right": right[:2]})


def test_mse_and_l2_on_numeric_outputs():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 6, generator=g)
    clean = torch.zeros(3, 4, dtype=torch.long)
    vector = torch.randn(3, 6, generator=g)
    task = Task("num", clean, clean, [0, 0, 0], metric="mse", data={"target": vector})
    last = logits[:, -1]
    torch.testing.assert_close(task.per_prompt(logits), ((last - vector) ** 2).mean(-1))
    torch.testing.assert_close(task.with_metric("l2").per_prompt(logits), torch.linalg.vector_norm(last - vector, dim=-1))
    # a scalar output: the value of the answer column (here output dimension 2) vs a scalar target
    scalar = torch.randn(3, generator=g)
    one = Task("num", clean, clean, [2, 2, 2], metric="mse", data={"target": scalar})
    torch.testing.assert_close(one.per_prompt(logits), (last[:, 2] - scalar) ** 2)
    # several positions, each with a scalar target
    pos = torch.tensor([[1, 3]] * 3)
    targets = torch.randn(3, 2, generator=g)
    multi = Task("num", clean, clean, [[2, 2]] * 3, answer_pos=pos, metric="mse", data={"target": targets})
    expected = ((logits[:, [1, 3], 2] - targets) ** 2).mean(-1)
    torch.testing.assert_close(multi.per_prompt(logits), expected)
    with pytest.raises(TaskError, match=r"metric 'mse' compares the output with data\['target'\], which is missing"):
        Task("num", clean, clean, [0, 0, 0], metric="mse")
    # the distance to the clean output is 0 at the clean run and grows as the output moves
    at_clean = Task("num", clean, clean, [0, 0, 0], metric="l2", data={"target": last})
    assert float(at_clean.score(logits)) == 0.0 and float(at_clean.score(logits + 1)) > 0
    assert float(normalized(0.5, 0.0, 1.0)) == 0.5  # distances normalize like any metric


def test_kl_reference_in_task_data_follows_subset():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(4, 3, 7, generator=g)
    clean = torch.zeros(4, 3, dtype=torch.long)
    task = Task("kl", clean, clean, [1, 1, 1, 1], metric="kl", data={"clean_logits": ref})
    assert torch.allclose(task.per_prompt(ref), torch.zeros(4), atol=1e-6)
    sub = task.subset([3, 1])
    assert torch.allclose(sub.per_prompt(ref[[3, 1]]), torch.zeros(2), atol=1e-6)
    assert bool((sub.per_prompt(ref[[1, 3]]) > 0).all())
