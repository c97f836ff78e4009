"""The needle grid's variants (corpus haystacks, several needles, several keys, paraphrases), its
equality with the bare model under the full cache, its memory refusal before any forward pass, and
the CLI's options."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from model_factory import make_model

import circuitkit as ck
from circuitkit.cli import main
from circuitkit.heads.kv import (
    KVPolicy,
    check_grid_memory,
    grid_memory_per_prompt,
    needle_grid,
    run_with_kv_policy,
)
from circuitkit.tasks.builders import needle

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ("Mary", "John", "Tom", "Anna")  # single tokens of the word tokenizer
HAY = ["the park . the store .", "the school . a garden .", "the house . the office ."] * 20


@pytest.fixture(scope="module")
def handbuilt():
    return ck.load_model("zoo:retrieval-handbuilt")


def _decode(tok, ids):
    return tok.decode(ids).replace(" ", "")


def test_keys_put_each_key_and_value_in_its_needle_and_ask_one(handbuilt):
    tok = handbuilt.tokenizer
    keys = ("river", "stone", "wall")
    task = needle(handbuilt, context_lengths=(128,), depths=(0.0, 0.5), keys=keys,
                  values=("1021", "1124", "1218"), haystack=ck.zoo_card("retrieval-handbuilt").task["params"]["haystack"])
    assert len(task) == 6
    for i in range(len(task)):
        needles = task.meta["needles"][i]
        ids = task.clean[i].tolist()
        assert [n["key"] for n in needles] == [keys[(i + j) % 3] for j in range(3)]  # prompt i asks key i mod 3
        for n in needles:  # every key and value at its recorded position
            assert tok.decode(ids[n["key_start"]: n["key_start"] + 1]).strip() == n["key"]
            assert _decode(tok, ids[n["value_start"]: n["value_end"]]) == n["value"]
        asked = needles[0]
        assert int(task.positions["needle_start"][i]) == asked["value_start"]
        assert int(task.answers[i, 0]) == ids[asked["value_start"]]  # the asked key's value answers
        assert f"What is the {asked['key']} code ? The {asked['key']} code is" in task.prompts[i]
        # the asked needle at the cell's depth (moved back to a sentence start), the others spread after it
        assert asked["depth"] == (0.0, 0.5)[i // 3]
        assert sorted(n["depth"] for n in needles[1:]) == sorted((asked["depth"] + j / 3) % 1 for j in (1, 2))


def test_token_id_haystack_keeps_exact_depths_and_distractors_and_paraphrases(word_tokenizer):
    model = make_model(word_tokenizer, n_ctx=256)
    hay = torch.randint(10, len(word_tokenizer), (400,), generator=torch.Generator().manual_seed(0))
    hay = hay[~torch.isin(hay, torch.tensor(word_tokenizer.encode(".", add_special_tokens=False)))]
    template, question = "The secret code is {VALUE} .", "What is the secret code ? The secret code is"
    single = needle(model, context_lengths=(100,), depths=(0.0, 0.3, 1.0), values=NAMES[:2], haystack=hay,
                    needle_template=template, question=question)
    n_needle = len(word_tokenizer.encode(" The secret code is Mary .", add_special_tokens=False))
    n_question = len(word_tokenizer.encode(" " + question, add_special_tokens=False))
    n_hay = 100 - 1 - n_needle - n_question
    for i, depth in enumerate((0.0, 0.0, 0.3, 0.3, 1.0, 1.0)):  # no sentences: the exact cut
        assert task_start(single, i) == 1 + round(depth * n_hay)
    assert single.clean[:, 1:].flatten().tolist() != []  # token ids went in as given
    assert single.clean[0, 1 + n_needle: 1 + n_needle + 5].tolist() == hay[:5].tolist()
    many = needle(model, context_lengths=(100,), depths=(0.5,), values=NAMES[:3], haystack=hay, n_needles=3,
                  needle_template=template, question=question, distractor_template="The code is {VALUE} .")
    text = many.prompts[0]
    assert text.count("The secret code is Mary") == 1 and text.count("The code is") == 2
    assert [n["value"] for n in many.meta["needles"][0]] == ["Mary", "John", "Tom"]
    para = needle(model, context_lengths=(100,), depths=(0.5,), values=NAMES[:2], haystack=hay,
                  needle_template=template, question=question, paraphrase="The secret is {VALUE} .")
    assert "The secret is Mary" in para.prompts[0] and "The secret code is Mary" not in para.prompts[0]
    assert para.prompts[0].endswith(question)
    with pytest.raises(ValueError, match=r"with keys, question must contain '\{KEY\}'"):
        needle(model, context_lengths=(100,), values=NAMES[:2], haystack=hay, keys=("Tom", "Anna"),
               needle_template="The {KEY} code is {VALUE} .", question=question)


def task_start(task, i):
    return task.meta["needles"][i][0]["start"]


def test_a_list_of_texts_is_a_corpus_and_the_full_cache_grid_is_the_bare_model(word_tokenizer):
    """Under the full cache the grid's accuracy and logit difference are the bare model's, cell by
    cell; under a policy they are `run_with_kv_policy`'s; small batches give the same numbers."""
    model = make_model(word_tokenizer, n_ctx=128, seed=2)
    kw = dict(values=NAMES, haystack=HAY, needle_template="The secret code is {VALUE} .",
              question="What is the secret code ? The secret code is")
    task = needle(model, context_lengths=(64,), depths=(0.0, 0.5, 1.0), **kw)
    with torch.no_grad():
        logits = model(task.clean)[torch.arange(len(task)), task.answer_pos]
    policy = KVPolicy(frozenset(), sink=2, window=8)
    squeezed = run_with_kv_policy(model, task.clean, policy)[torch.arange(len(task)), task.answer_pos]
    grid = needle_grid(model, None, (64,), (0.0, 0.5, 1.0), **kw)
    streamed = needle_grid(model, policy, (64,), (0.0, 0.5, 1.0), batch_size=5, **kw)
    for out, reference in ((grid, logits), (streamed, squeezed)):
        correct = (reference.argmax(-1) == task.answers[:, 0]).float().reshape(3, 4)
        diff = (reference.gather(1, task.answers[:, :1]) - reference.gather(1, task.wrong_answers[:, :1])).reshape(3, 4)
        assert out.accuracy.tolist() == correct.mean(1).tolist()
        assert out.logit_diff.tolist() == pytest.approx(diff.mean(1).tolist(), abs=1e-5)
    assert (grid.n_prompts == 4).all() and (grid.needle == "literal").all() and (grid.kv_kept == 1).all()
    # a budget that holds one prompt per batch: the same numbers, one forward per prompt
    one = grid_memory_per_prompt(model, 64)[0]
    calls = []
    model.blocks[0].hook_resid_pre.add_hook(lambda x, hook: calls.append(x.shape[0]))
    try:
        small = needle_grid(model, None, (64,), (0.0, 0.5, 1.0), max_memory=1.5 * one, **kw)
    finally:
        model.reset_hooks()
    assert calls == [1] * 12
    pd.testing.assert_frame_equal(small, grid, atol=1e-5)


def test_the_memory_refusal_comes_before_any_forward_pass(handbuilt, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a forward pass ran")

    monkeypatch.setattr(handbuilt, "forward", boom)
    monkeypatch.setattr(handbuilt, "run_with_hooks", boom)
    need, scores = grid_memory_per_prompt(handbuilt, 256)
    assert scores == 4 * 4 * 256 * 256  # float32 x 4 heads x 256^2
    with pytest.raises(ValueError, match=r"one prompt of 256 tokens needs about .* \(\d[\d,]* bytes\) in one layer: "
                                         r"4 heads x 256\^2 attention scores .* max_memory is .*"
                                         r"pass max_memory >= [\d,]+ \(bytes\) or use context lengths <= 255"):
        needle_grid(handbuilt, None, (64, 256), (0.5,), max_memory=need - 1)
    assert check_grid_memory(handbuilt, (256,), need) == need


def test_cli_needle_grid_variants(tmp_path, capsys):
    out, html = tmp_path / "grid.parquet", tmp_path / "grid.html"
    hay = tmp_path / "docs"
    hay.mkdir()
    text = ck.zoo_card("retrieval-handbuilt").task["params"]["haystack"]
    for i, part in enumerate(text.split(". ")[:40]):
        (hay / f"{i:02d}.txt").write_text(part + ".")
    assert main(["heads", "needle-grid", "zoo:retrieval-handbuilt", "--keep", "a1.h0", "--lengths", "96",
                 "--depths", "0", "1", "--window", "16", "--keys", "river", "stone", "--haystack", str(hay),
                 "--out", str(out), "--html", str(html), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "2 needle(s) per prompt, 2 keys, literal needle" in printed
    table = pd.read_parquet(out)
    assert set(table.policy) == {"full cache", "razor"} and (table.n_keys == 2).all() and html.exists()
    assert main(["heads", "needle-grid", "zoo:retrieval-handbuilt", "--keep", "a1.h0", "--lengths", "96",
                 "--depths", "0.5", "--paraphrase", "The code is {VALUE}.", "--n-needles", "2",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "2 needle(s) per prompt, no keys, paraphrase needle" in printed
    assert main(["heads", "needle-grid", "zoo:retrieval-handbuilt", "--keep", "a1.h0", "--lengths", "256",
                 "--max-memory", "1000", "--no-progress"]) != 0
    assert "needs about 5.45 MiB (5,716,992 bytes) in one layer" in capsys.readouterr().err
