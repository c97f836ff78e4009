"""RazorAttention's compensation token and HeadKV's per-head budgets against a hand-written masked
attention: for every layer, head and query, the head's output ``z`` under the policy's hooks equals
attention recomputed from that layer's own queries, keys and values over the cache the policy
describes (an explicit extra key / value for the compensation token, an explicit top-B selection
for a budget), to 1e-5; on a plain model and on a grouped-query (RMS, rotary) one."""

import math

import pytest
import torch
from model_factory import word_model

import circuitkit as ck
from circuitkit.errors import InputError
from circuitkit.heads.kv import (
    HeadBudgetPolicy,
    KVPolicy,
    kv_kept_share,
    needle_grid,
    policy_hooks,
    run_with_kv_policy,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_POS = 40


@pytest.fixture(scope="module", params=["mha", "gqa"])
def model(request):
    return word_model(request.param, seed=5 if request.param == "mha" else 6)


def _tokens(model, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(4, model.cfg.d_vocab, (batch, N_POS), generator=gen)


def _policy_run(model, tokens, policy, ends=None):
    """Per layer: q, k, v (rotated where the model rotates) and z from one run under ``policy``."""
    rotary = model.cfg.positional_embedding_type == "rotary"
    want = ("hook_rot_q", "hook_rot_k") if rotary else ("hook_q", "hook_k")
    store = {}

    def keep(act, hook):
        store[hook.name] = act.detach().clone()

    hooks = policy_hooks(model, policy, ends)
    names = [f"blocks.{layer}.attn.{h}" for layer in range(model.cfg.n_layers) for h in (*want, "hook_v", "hook_z")]
    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=hooks + [(n, keep) for n in names])
    return [{key: store[f"blocks.{layer}.attn.{h}"] for key, h in zip("qkvz", (*want, "hook_v", "hook_z"), strict=True)}
            for layer in range(model.cfg.n_layers)]


def _reference_z(model, layer, acts, policy, ends):
    """``z`` ``[batch, pos, heads, d_head]`` recomputed head by head, query by query."""
    q, k, v = acts["q"], acts["k"], acts["v"]
    batch, n, n_heads, _ = q.shape
    group = n_heads // k.shape[2]
    scale = model.blocks[layer].attn.attn_scale
    z = torch.zeros_like(acts["z"])
    for b in range(batch):
        end = n - 1 if ends is None else int(ends[b])
        for h in range(n_heads):
            head = ck.names.head(layer, h)
            kk, vv = k[b, :, h // group], v[b, :, h // group]
            selected = None
            if isinstance(policy, HeadBudgetPolicy) and head in policy.budgets:
                start = max(0, end - policy.window + 1)
                importance = torch.zeros(n)
                for hq in range(h // group * group, h // group * group + group):  # the key / value group
                    for i in range(start, end + 1):
                        logits = torch.stack([q[b, i, hq] @ k[b, j, h // group] / scale for j in range(i + 1)])
                        importance[: i + 1] += torch.softmax(logits, 0)
                ranked = sorted(range(start), key=lambda j: (-float(importance[j]), j))
                selected = set(ranked[: policy.budgets[head]])
            for i in range(n):
                past = range(i + 1)
                if isinstance(policy, KVPolicy) and head not in policy.full:
                    kept = [j for j in past if j < policy.sink or i - j < policy.window]
                elif selected is not None:
                    kept = [j for j in past if j in selected or i - j < policy.window]
                else:
                    kept = list(past)
                dropped = [j for j in past if j not in kept]
                logits = [q[b, i, h] @ kk[j] / scale for j in kept]
                values = [vv[j] for j in kept]
                if isinstance(policy, KVPolicy) and policy.compensate and dropped:
                    k_hat, v_hat = kk[dropped].mean(0), vv[dropped].mean(0)  # RazorAttention eq. 4
                    logits.append(q[b, i, h] @ k_hat / scale + math.log(len(dropped)))  # eq. 5: |D| e^{q.k^}
                    values.append(v_hat)
                weights = torch.softmax(torch.stack(logits), 0)
                z[b, i, h] = (weights[:, None] * torch.stack(values)).sum(0)
    return z


def _policies(model):
    first = [ck.names.head(0, h) for h in range(2)]  # one whole key / value group under GQA
    return [
        KVPolicy(frozenset(first), sink=2, window=6, compensate=True),
        KVPolicy(frozenset(), sink=0, window=5, compensate=True),
        KVPolicy(frozenset(first), sink=3, window=4),
        HeadBudgetPolicy({ck.names.head(layer, h): b for layer in range(2) for h, b in zip(range(4), (3, 3, 0, 0),
                                                                                          strict=True)}, window=5),
        HeadBudgetPolicy({ck.names.head(1, h): 7 for h in range(4)}, window=3),  # layer 0 keeps its full cache
    ]


@pytest.mark.parametrize("which", range(5))
def test_a_policy_equals_hand_written_masked_attention(model, which):
    policy = _policies(model)[which]
    tokens = _tokens(model)
    ends = torch.tensor([N_POS - 1, 29]) if isinstance(policy, HeadBudgetPolicy) else None
    for layer, acts in enumerate(_policy_run(model, tokens, policy, ends)):
        torch.testing.assert_close(acts["z"], _reference_z(model, layer, acts, policy, ends), atol=1e-5, rtol=0)


def test_the_compensation_token_changes_the_output_and_a_covering_window_is_the_model(model):
    tokens = _tokens(model)
    with torch.no_grad():
        plain = model(tokens)
    evict = run_with_kv_policy(model, tokens, KVPolicy(frozenset(), 1, 6))
    compensated = run_with_kv_policy(model, tokens, KVPolicy(frozenset(), 1, 6, compensate=True))
    assert not torch.allclose(evict, compensated, atol=1e-3)
    every = {ck.names.head(layer, h): 0 for layer in range(2) for h in range(4)}
    for covering in (KVPolicy(frozenset(), 0, N_POS, compensate=True), KVPolicy(frozenset(), 1, N_POS - 1, True),
                     HeadBudgetPolicy(every, window=N_POS), HeadBudgetPolicy(dict.fromkeys(every, N_POS), window=1)):
        torch.testing.assert_close(run_with_kv_policy(model, tokens, covering), plain, atol=1e-5, rtol=0)


def test_budgets_are_per_key_value_group_and_checked(model):
    gqa = model.cfg.n_key_value_heads not in (None, model.cfg.n_heads)
    uneven = HeadBudgetPolicy({"a0.h0": 2, "a0.h1": 3}, window=4)
    if gqa:
        with pytest.raises(InputError, match="share one key / value head"):
            uneven.check(model)
    else:
        uneven.check(model)
    with pytest.raises(InputError, match="whole numbers of tokens"):
        HeadBudgetPolicy({"a0.h0": -1}).check(model)
    with pytest.raises(InputError, match="window >= 1"):
        HeadBudgetPolicy({}, window=0).check(model)
    scores = ck.Scores.from_head_grid(torch.tensor([[4.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 0.0]]), "test")
    policy = HeadBudgetPolicy.from_scores(model, scores, budget=10, window=4, share=0.5)
    n_kv = model.cfg.n_key_value_heads or model.cfg.n_heads
    total = sum(policy.budgets[ck.names.head(layer, g * (4 // n_kv))] for layer in range(2) for g in range(n_kv))
    assert total == 10 * 2 * n_kv  # the pool is handed out exactly
    assert policy.budgets["a0.h0"] == policy.budgets["a0.h1"] if gqa else policy.budgets["a0.h0"] > 20
    assert kv_kept_share(model, policy, 1000) == pytest.approx((10 + 4) / 1000)


def test_head_budgets_keep_the_needle_where_the_retrieval_head_gets_the_pool():
    """HeadKV on the hand-built needle model: budgets from its retrieval scores give the retrieval
    head a1.h0 the pool and find every needle at 1/8 of the cache; a pure sliding window of the
    same size (budget 0) finds only the needles it reaches."""
    model = ck.load_model("zoo:retrieval-handbuilt")
    params = {k: v for k, v in ck.zoo_card("retrieval-handbuilt").task["params"].items()
              if k in ("values", "haystack", "needle_template", "question")}
    scores = ck.retrieval_scores(model, ck.zoo_task("retrieval-handbuilt", model, context_lengths=[64]), progress=False)
    headkv = HeadBudgetPolicy.from_scores(model, scores, budget=8, window=8, share=0.5)
    grid = needle_grid(model, headkv, (128, 256), (0.0, 0.5, 1.0), **params)
    assert (grid.accuracy == 1).all() and (grid.kv_kept <= 0.125).all()
    window = HeadBudgetPolicy(dict.fromkeys(headkv.budgets, 0), window=16)
    sliding = needle_grid(model, window, (128,), (0.0, 0.5, 1.0), **params)
    assert (sliding[sliding.depth < 1].accuracy == 0).all()
    compensated = needle_grid(model, KVPolicy.razor(model, ["a1.h0"], 4, 16, compensate=True), (128,), (0.0, 0.5),
                              **params)
    assert (compensated.accuracy == 1).all()
