import pytest
import torch

from circuitkit import Task, metrics, normalized


def _task(**overrides):
    kwargs = dict(name="t", clean=torch.tensor([[0, 5, 6], [0, 7, 8]]), corrupted=torch.tensor([[0, 9, 6], [0, 9, 8]]),
                  answers=[3, 4], wrong_answers=[5, 6], d_vocab=10)
    kwargs.update(overrides)
    return Task(**kwargs)


def test_valid_task_defaults():
    t = _task()
    assert t.answer_pos.tolist() == [2, 2]
    assert t.answers.shape == (2, 1)
    assert len(t.subset([1])) == 1 and t.subset([1]).clean.tolist() == [[0, 7, 8]]


def test_length_mismatch_names_prompt_and_fix():
    with pytest.raises(ValueError, match=r"clean prompt 1 tokenizes to 3 tokens, corrupted to 2.*single tokens"):
        _task(corrupted=torch.tensor([[0, 9, 6], [0, 9, 1]]), meta={"pad_token_id": 1})


def test_shape_mismatch_without_padding():
    with pytest.raises(ValueError, match="same length"):
        _task(corrupted=torch.tensor([[0, 9, 6, 1], [0, 9, 8, 1]]))
    with pytest.raises(ValueError, match="2 clean prompts but 1 corrupted"):
        _task(corrupted=torch.tensor([[0, 9, 6]]))


def test_token_outside_vocab():
    with pytest.raises(ValueError, match=r"clean prompt 1 has token id 12, outside the vocabulary of size 10"):
        _task(clean=torch.tensor([[0, 5, 6], [0, 12, 8]]))
    with pytest.raises(ValueError, match=r"answer of prompt 0 has token id 11"):
        _task(answers=[11, 4])


def test_answer_position_and_answers_checked():
    with pytest.raises(ValueError, match="answer position 3 of prompt 0 is outside"):
        _task(answer_pos=[3, 2])
    with pytest.raises(ValueError, match="prompt 1 has no answer token"):
        _task(answers=[[3], [-1]])
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        _task(metric="bleu")
    with pytest.raises(ValueError, match="integer token ids"):
        _task(clean=torch.zeros(2, 3))


def test_check_model_vocab_mismatch(tiny_model):
    t = _task(d_vocab=10)
    with pytest.raises(ValueError, match="vocabulary of 10 tokens but model"):
        t.check_model(tiny_model)


def test_check_model_accepts_embeddings_padded_past_the_tokenizer(word_tokenizer):
    """Like Pythia (50304 embedding rows, a 50277-token tokenizer): a task built with the model's
    own tokenizer runs; one built with another tokenizer of the padded size does not."""
    from model_factory import make_model

    from circuitkit.tasks.builders import induction

    padded = make_model(word_tokenizer, d_vocab=len(word_tokenizer) + 24)
    task = induction(padded, n_prompts=2, seq_len=3)
    assert task.d_vocab == len(word_tokenizer) < padded.cfg.d_vocab
    task.check_model(padded)
    foreign = _task(d_vocab=padded.cfg.d_vocab)
    with pytest.raises(ValueError, match=f"its tokenizer {len(word_tokenizer)}"):
        foreign.check_model(padded)


def test_metrics_on_known_logits():
    t = _task(answers=[[3, 4], [4, -1]], wrong_answers=[[5], [6]])
    logits = torch.zeros(2, 3, 10)
    logits[0, 2, 3], logits[0, 2, 4], logits[0, 2, 5] = 2.0, 4.0, 1.0
    logits[1, 2, 4], logits[1, 2, 6] = 1.0, 3.0
    assert torch.allclose(metrics.logit_diff(logits, t), torch.tensor([2.0, -2.0]))
    assert metrics.accuracy(logits, t).tolist() == [1.0, 0.0]
    probs = logits[:, 2].softmax(-1)
    assert torch.allclose(metrics.answer_prob(logits, t), torch.stack([probs[0, 3] + probs[0, 4], probs[1, 4]]))
    assert torch.allclose(metrics.kl_div(logits, t, logits), torch.zeros(2), atol=1e-6)
    assert float(metrics.kl_div(torch.zeros_like(logits), t, logits).min()) > 0
    assert float(normalized(3.0, 5.0, 1.0)) == 0.5


def test_nan_metric_raises():
    t = _task(metric=lambda logits, task: torch.full((2,), float("nan")))
    with pytest.raises(ValueError, match="returned NaN for prompt 0"):
        t.score(torch.zeros(2, 3, 10))


def test_normalized_needs_a_gap():
    with pytest.raises(ValueError, match="corruption does not change"):
        normalized(1.0, 2.0, 2.0)


def test_kl_needs_reference():
    with pytest.raises(ValueError, match="clean run's logits"):
        _task(metric="kl").score(torch.zeros(2, 3, 10))


def test_out_of_vocabulary_is_a_named_error_when_built_and_when_scored(tiny_model):
    from circuitkit.tasks import OutOfVocabularyError, TaskError

    assert issubclass(OutOfVocabularyError, TaskError) and issubclass(TaskError, ValueError)
    with pytest.raises(OutOfVocabularyError, match=r"answer of prompt 0 has token id 11, outside the vocabulary of size 10"):
        _task(answers=[11, 4])
    # no sizes given when built: refused by check_model, and at scoring (not a raw IndexError)
    big = tiny_model.cfg.d_vocab + 3
    t = _task(answers=[big, 4], d_vocab=None)
    with pytest.raises(OutOfVocabularyError, match=f"answer of prompt 0 has token id {big}, outside model 'tiny-test'"):
        t.check_model(tiny_model)
    with pytest.raises(OutOfVocabularyError, match=f"answer token id {big} is outside the model's {big - 3} output logits"):
        t.score(tiny_model(t.clean))
