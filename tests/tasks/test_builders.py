"""Every builder on two different tokenizers: word-level (zoo) and byte-level BPE (GPT-2 style)."""

import pytest
import torch

from circuitkit import build_task, greater_than, induction, ioi, multiple_choice, needle

TOKENIZERS = ["word_tokenizer", "bpe_tokenizer"]


@pytest.fixture(params=TOKENIZERS)
def tok(request):
    return request.getfixturevalue(request.param)


def _check_common(task, tok):
    assert task.clean.shape == task.corrupted.shape
    assert task.meta["kept"] == len(task) > 0
    assert task.d_vocab == len(tok)
    task.check_vocab(len(tok))
    # answer_pos is the last real token: the token after it is padding (or the end).
    for i, pos in enumerate(task.answer_pos.tolist()):
        assert task.clean[i, pos] != task.meta["pad_token_id"] or pos == 0


def test_ioi(tok):
    task = ioi(tok, n_prompts=12, seed=1)
    _check_common(task, tok)
    for i in range(len(task)):
        io_tok = int(task.clean[i, task.positions["IO"][i]])
        s1 = int(task.clean[i, task.positions["S1"][i]])
        s2 = int(task.clean[i, task.positions["S2"][i]])
        assert io_tok == int(task.answers[i, 0])  # the IO name sits at the IO position
        assert s1 == s2 == int(task.wrong_answers[i, 0])
        assert io_tok != s1
    # Both orders are present in "mixed".
    assert set((task.positions["IO"] < task.positions["S1"]).tolist()) == {True, False}
    abba = ioi(tok, n_prompts=4, order="ABBA")
    assert bool((abba.positions["IO"] < abba.positions["S1"]).all())


def test_ioi_drops_multi_token_names(tok):
    task = ioi(tok, n_prompts=8, names=["Mary", "John", "Alice", "Bob", "Tom", "Xylophonicus", "Qwertyuiopz"])
    assert len(task) == 8  # prompts built only from the 5 single-token names
    ids = {int(x) for x in task.answers[:, 0]}
    assert len(ids) <= 5
    with pytest.raises(ValueError, match="only 2 of the 3 names are single tokens"):
        ioi(tok, names=["Mary", "John", "Qwertyuiopz"])


def test_induction(tok):
    task = induction(tok, n_prompts=6, seq_len=8, seed=3)
    _check_common(task, tok)
    first, second = int(task.positions["first"][0]), int(task.positions["second"][0])
    assert torch.equal(task.clean[:, first:first + 7], task.clean[:, second:second + 7])
    assert torch.equal(task.answers[:, 0], task.clean[:, first + 7])
    assert not torch.equal(task.corrupted[:, first:second], task.clean[:, first:second])


def test_greater_than(tok):
    task = greater_than(tok, n_prompts=10, seed=2)
    _check_common(task, tok)
    for i in range(len(task)):
        answers = [tok.decode([t]).strip() for t in task.answers[i].tolist() if t >= 0]
        wrong = [tok.decode([t]).strip() for t in task.wrong_answers[i].tolist() if t >= 0]
        yy = int(task.prompts[i].split("17")[1][:2])
        assert all(int(a) > yy for a in answers) and all(int(w) <= yy for w in wrong)
        assert "1701" in task.corrupted_prompts[i].replace(" ", "")


def test_multiple_choice(tok):
    task = multiple_choice(tok, n_prompts=10, seed=0)
    _check_common(task, tok)
    assert bool((task.answers[:, 0] != task.wrong_answers[:, 0]).all())


def test_needle(tok):
    hay = "the park and the store . the house and the garden . " * 60
    task = needle(tok, context_lengths=(40, 64), depths=(0.0, 0.5, 1.0), values=("7", "42"), haystack=hay)
    _check_common(task, tok)
    assert set(task.clean.shape[1:]) == {64}
    for i in range(len(task)):
        start, end = int(task.positions["needle_start"][i]), int(task.positions["needle_end"][i])
        assert task.clean[i, start:end].tolist() == task.meta["answer_tokens"][i]
        assert int(task.answers[i, 0]) == task.meta["answer_tokens"][i][0]
    sub = task.subset([2, 0])
    assert sub.meta["answer_tokens"] == [task.meta["answer_tokens"][2], task.meta["answer_tokens"][0]]


def test_needle_bad_input(word_tokenizer):
    with pytest.raises(ValueError, match="haystack is empty"):
        needle(word_tokenizer, haystack="  ")
    with pytest.raises(ValueError, match=r"depth 1.5 is outside \[0, 1\]"):
        needle(word_tokenizer, depths=(1.5,), haystack="the park . " * 50)


def test_build_task_by_name(word_tokenizer):
    assert build_task("ioi", word_tokenizer, n_prompts=3).name == "ioi"
    with pytest.raises(ValueError, match="unknown task 'iol'"):
        build_task("iol", word_tokenizer)


@pytest.mark.parametrize("builder", ["ioi", "induction", "greater_than", "multiple_choice"])
def test_prompt_counts_zero_and_absurd_are_refused_with_the_real_cause(word_tokenizer, builder):
    from circuitkit.tasks import TaskError, build_task

    with pytest.raises(TaskError, match=rf"{builder}: n_prompts is 0; ask for at least 1 prompt"):
        build_task(builder, word_tokenizer, n_prompts=0)
    with pytest.raises(TaskError, match=r"n_prompts=100,000,000 is more than the 100,000 allowed: .* GB of token ids "
                                        r"and one unbatched forward pass ~[\d,]+ GB of logits"):
        build_task(builder, word_tokenizer, n_prompts=100_000_000)
    with pytest.raises(TaskError, match="n_prompts must be a whole number of prompts, got '16'"):
        build_task(builder, word_tokenizer, n_prompts="16")


def test_a_tokenizer_without_special_tokens_never_gets_its_pad_id_as_a_prompt_token():
    """With no BOS / EOS / pad token, prompts pad with id 0: random-token builders must not sample it
    (it would count as padding and the task would blame its words)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from circuitkit.tasks.builders import induction

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel()
    core.train_from_iterator(["the quick brown fox jumps over the lazy dog " * 50],
                             trainers.BpeTrainer(vocab_size=300, special_tokens=[]))
    tok = PreTrainedTokenizerFast(tokenizer_object=core)
    assert tok.all_special_ids == [] and tok.pad_token_id is None
    for seed in range(10):
        task = induction(tok, n_prompts=16, seq_len=5, prepend_bos=False, seed=seed)
        assert not (task.clean == 0).any() and not (task.corrupted == 0).any()
