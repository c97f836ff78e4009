"""circuitkit.heads: attention-head scores — retrieval heads (Wu et al., QRHead, LOCOS; with a
causal check), induction, previous-token, duplicate-token, locality (streaming heads) and echo,
DuoAttention's learned gates (`circuitkit.heads.gates`) — and KV-cache policies built on them
(`circuitkit.heads.kv`, `circuitkit.heads.kvpress`)."""

from circuitkit.heads.causal import (
    CausalCheck,
    needle_accuracy,
    retrieval_causal_check,
    uniform_attention_hooks,
)
from circuitkit.heads.detectors import kv_group_mean, locos_scores, qr_scores
from circuitkit.heads.gates import duo_gate_hooks, duo_gates, run_with_duo_gates
from circuitkit.heads.patterns import KINDS as HEAD_SCORE_KINDS
from circuitkit.heads.patterns import head_scores, repeated_tokens
from circuitkit.heads.retrieval import (
    NeedlePrompt,
    needle_prompts,
    retrieval_heads,
    retrieval_scores,
    retrieval_scores_generate,
    rouge1_recall,
)

__all__ = [
    "CausalCheck",
    "HEAD_SCORE_KINDS",
    "NeedlePrompt",
    "duo_gate_hooks",
    "duo_gates",
    "head_scores",
    "kv_group_mean",
    "locos_scores",
    "needle_accuracy",
    "needle_prompts",
    "qr_scores",
    "repeated_tokens",
    "retrieval_causal_check",
    "retrieval_heads",
    "retrieval_scores",
    "retrieval_scores_generate",
    "rouge1_recall",
    "run_with_duo_gates",
    "uniform_attention_hooks",
]
