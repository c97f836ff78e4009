"""QRHead and LOCOS retrieval-head detectors: each recovers the zoo needle models' recorded
retrieval heads (ROC-AUC >= 0.95 against the cards' ``evidence["retrieval_heads"]``), QRHead's
mass equals the attention read off a cache, LOCOS's per-position writes sum to each head's direct
logit attribution computed by hand through the final norm (LayerNorm, and RMSNorm with
grouped-query attention), and ``per_kv_group`` averages over heads sharing a key / value head."""

import pytest
import torch
from model_factory import word_model

import circuitkit as ck
from circuitkit.errors import InputError
from circuitkit.heads import NeedlePrompt, head_scores, kv_group_mean, locos_scores, qr_scores

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("name", ["retrieval-handbuilt", "needle-trained"])
def test_both_detectors_find_the_zoo_models_retrieval_heads(name):
    model = ck.load_model(f"zoo:{name}")
    card = ck.zoo_card(name)
    task = ck.zoo_task(card, model)
    truth = list(card.evidence["retrieval_heads"])
    for kind in ("qrhead", "locos"):
        scores = head_scores(model, task, kind)
        assert ck.roc_auc(scores, truth, by_abs=False) >= 0.95, (kind, scores.top(4, by_abs=False))
    if name == "retrieval-handbuilt":  # its one retrieval head is also the only one writing the answer
        locos = locos_scores(model, task)
        assert locos.top(1, by_abs=False)[0][0] == "a1.h0" and locos.meta["n_kept"] == len(task)
        assert sorted(v for k, v in locos.as_dict().items() if k != "a1.h0") == [0.0] * 7


def _prompts(model, n=3, n_pos=24, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        tokens = torch.randint(4, model.cfg.d_vocab, (n_pos - i,), generator=gen)
        start = 3 + 2 * i
        out.append(NeedlePrompt(tokens, start, start + 2, tokens[start: start + 2]))
    return out


@pytest.fixture(scope="module", params=["ln", "gqa"])
def tiny(request):
    return word_model("mha", seed=1) if request.param == "ln" else word_model("gqa", seed=2)


def test_qrhead_is_the_query_mass_on_the_needle(tiny):
    prompts = _prompts(tiny)
    scores = qr_scores(tiny, prompts, query_len=4, batch_size=2)
    expected = torch.zeros(len(prompts), tiny.cfg.n_layers, tiny.cfg.n_heads)
    for i, p in enumerate(prompts):
        _, cache = tiny.run_with_cache(p.tokens[None])
        n = len(p.tokens)
        for layer in range(tiny.cfg.n_layers):
            pattern = cache["pattern", layer][0]  # [H, q, k]
            expected[i, layer] = pattern[:, n - 4:, p.needle_start: p.needle_end].sum(-1).mean(-1)
    torch.testing.assert_close(scores.meta["per_prompt"], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(scores.head_grid(), expected.mean(0), atol=1e-6, rtol=0)
    grouped = qr_scores(tiny, prompts, query_len=4, per_kv_group=True).head_grid()
    torch.testing.assert_close(grouped, kv_group_mean(tiny, expected.mean(0)), atol=1e-6, rtol=0)
    if tiny.cfg.n_key_value_heads:
        assert torch.equal(grouped[:, 0], grouped[:, 1]) and not torch.equal(grouped[:, 0], grouped[:, 2])
    with pytest.raises(InputError, match="reaches into a needle"):
        qr_scores(tiny, prompts, query_len=20)


def test_locos_writes_sum_to_each_heads_direct_logit_attribution(tiny):
    prompts = _prompts(tiny)
    scores = locos_scores(tiny, prompts, min_recall=-1.0, batch_size=2)
    assert scores.meta["n_kept"] == len(prompts)
    for i, p in enumerate(prompts):
        tokens = torch.cat([p.tokens, p.answer[:-1]])
        _, cache = tiny.run_with_cache(tokens[None])
        for t, y in enumerate(p.answer.tolist()):
            pos = len(p.tokens) - 1 + t
            for layer in range(tiny.cfg.n_layers):
                out = torch.einsum("hd,hdm->hm", cache["z", layer][0, pos], tiny.W_O[layer])  # [H, d_model]
                if tiny.cfg.normalization_type == "LN":
                    out = out - out.mean(-1, keepdim=True)
                out = out / cache["ln_final.hook_scale"][0, pos] * tiny.ln_final.w
                expected = out @ tiny.W_U[:, y]
                torch.testing.assert_close(scores.meta["dla"][i, t, layer], expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(InputError, match="answers none of the"):
        locos_scores(tiny, prompts, min_recall=0.99)
