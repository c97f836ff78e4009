"""Discrete-SAE circuit identification (O'Neill & Bui 2024, arXiv 2405.12522).

Each attention head's output in ``d_model`` space (``z @ W_O`` per head), averaged over the
prompt's positions, is one vector per (prompt, head). One ReLU SAE (SAELens
``StandardTrainingSAE``, trained by SAELens's ``SAETrainer`` on these vectors from every head) maps
a vector to its code: the index of its largest latent. A head that computes the task gives
codes on positive prompts (the model can do the task) that never appear on negative prompts
(for IOI: no name repeats, i.e. circuitkit's ABC corrupted prompts); its score is the number of
such codes (optionally divided by the number of codes the head uses at all).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from circuitkit import names
from circuitkit.errors import InputError
from circuitkit.sae.train import quiet_sae_lens
from circuitkit.scores import Scores
from circuitkit.tasks.task import Task
from circuitkit.tokenizers import check_token_ids


@torch.no_grad()
def head_output_means(model, tokens, lengths: Tensor | None = None, batch_size: int = 32) -> Tensor:
    """Per-head outputs ``z @ W_O`` averaged over each prompt's positions.

    Args:
        tokens: ``[batch, pos]``; lengths: ``[batch]`` number of real (unpadded) positions
            to average over (default all).

    Returns ``[batch, n_layers, n_heads, d_model]``.
    """
    tokens = check_token_ids(model, tokens)
    n, seq = tokens.shape
    lengths = torch.full((n,), seq) if lengths is None else torch.as_tensor(lengths).reshape(-1).cpu()
    if lengths.shape[0] != n or bool((lengths < 1).any()) or bool((lengths > seq).any()):
        raise InputError(f"lengths must give 1..{seq} real positions for each of the {n} prompts")
    hooks = [names.hook("z", layer) for layer in range(model.cfg.n_layers)]
    out = []
    for start in range(0, n, batch_size):
        batch = tokens[start:start + batch_size]
        mask = (torch.arange(seq)[None] < lengths[start:start + batch_size, None]).float().to(batch.device)
        _, cache = model.run_with_cache(batch, names_filter=hooks)
        per_layer = []
        for layer, hook in enumerate(hooks):
            z = cache[hook]  # [b, pos, head, d_head]
            w_o = model.blocks[layer].attn.W_O  # [head, d_head, d_model]
            if z.shape[2] != w_o.shape[0]:  # grouped-query attention keeps z per query head
                raise InputError(f"hook_z has {z.shape[2]} heads but W_O has {w_o.shape[0]}")
            head_out = torch.einsum("bphd,hdm->bphm", z, w_o)
            per_layer.append((head_out * mask[..., None, None]).sum(1) / mask.sum(1)[:, None, None])
        out.append(torch.stack(per_layer, dim=1))
    return torch.cat(out).cpu()


def _lengths_of(task_or_tokens) -> tuple[Tensor, Tensor | None]:
    if isinstance(task_or_tokens, Task):
        # Positions past the scored one are padding (or after the question): leave them out.
        return task_or_tokens.clean, task_or_tokens.answer_pos + 1
    return torch.as_tensor(task_or_tokens), None


@torch.no_grad()
def _predicts_correctly(model, task) -> Tensor:
    """``[batch]`` bool: the clean run's top token at ``answer_pos`` is one of the answers."""
    logits = model(task.clean.to(model.cfg.device)).cpu()
    top = logits[torch.arange(len(task)), task.answer_pos].argmax(-1)
    return (task.answers == top[:, None]).any(-1)


def train_code_sae(vectors: Tensor, n_latents: int = 200, l1: float = 0.02, steps: int = 400,
                   batch_size: int = 64, lr: float = 1e-3, seed: int = 0, progress: bool = False):
    """Train SAELens's ReLU SAE on ``vectors`` ``[n, d]`` with its ``SAETrainer``.

    The vectors are fed from an in-memory shuffling iterator (there is no hook point to stream
    from: each row is one head's output). Returns the trained ``StandardTrainingSAE``.
    """
    from sae_lens import SAETrainer, StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    if vectors.ndim != 2 or len(vectors) < 2:
        raise InputError(f"need at least 2 vectors of shape [n, d] to train the code SAE, got {tuple(vectors.shape)}")
    torch.manual_seed(seed)
    vectors = vectors.detach().float()
    batch_size = min(batch_size, len(vectors))
    generator = torch.Generator().manual_seed(seed)

    def batches() -> Iterator[Tensor]:
        while True:
            order = torch.randperm(len(vectors), generator=generator)
            for i in range(0, len(order) - batch_size + 1, batch_size):
                yield vectors[order[i:i + batch_size]]

    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=vectors.shape[1], d_sae=n_latents, l1_coefficient=l1))
    cfg = SAETrainerConfig(total_training_samples=steps * batch_size, train_batch_size_samples=batch_size, lr=lr, lr_end=lr,
                           logger=LoggingConfig(log_to_wandb=False), dead_feature_window=10 ** 9,
                           feature_sampling_window=10 ** 9)
    with quiet_sae_lens(progress):
        return SAETrainer(cfg=cfg, sae=sae, data_provider=batches()).fit()


@torch.no_grad()
def codes_of(sae, vectors: Tensor) -> Tensor:
    """Argmax latent of each vector ``[..., d] -> [...]``; ``-1`` where no latent fires."""
    acts = sae.encode(vectors.float())
    code = acts.argmax(-1)
    return torch.where(acts.amax(-1) > 0, code, torch.full_like(code, -1))


def unique_code_scores(pos_codes: Tensor, neg_codes: Tensor, normalize: bool = False) -> Tensor:
    """Per head: number of codes seen on positive prompts and never on negative ones.

    Args: ``pos_codes`` ``[n_pos, n_layers, n_heads]``, ``neg_codes`` ``[n_neg, n_layers, n_heads]``
    (``-1`` = no code, ignored). With ``normalize`` the count is divided by the size of the
    union of codes the head uses. Returns ``[n_layers, n_heads]``.
    """
    n_layers, n_heads = pos_codes.shape[1:]
    grid = torch.zeros(n_layers, n_heads)
    for layer in range(n_layers):
        for h in range(n_heads):
            pos = set(pos_codes[:, layer, h].tolist()) - {-1}
            neg = set(neg_codes[:, layer, h].tolist()) - {-1}
            unique = len(pos - neg)
            union = len(pos | neg)
            grid[layer, h] = unique / union if normalize and union else unique
    return grid


def discrete_sae_head_scores(model, positive_task_or_tokens, negative_tokens=None, n_latents: int = 200,
                             l1: float = 0.02, steps: int = 400, lr: float = 1e-3, normalize: bool = False,
                             only_correct: bool = True, seed: int = 0, progress: bool = False) -> Scores:
    """Head scores of the discrete-SAE method.

    Args:
        positive_task_or_tokens: a ``Task`` (its clean prompts are the positive ones, and its
            corrupted prompts the negative ones unless ``negative_tokens`` is given) or tokens
            ``[n_pos, pos]``.
        negative_tokens: ``[n_neg, pos]`` prompts where the model cannot do the task.
        n_latents: latents of the shared ReLU SAE (paper: 200).
        l1: its L1 coefficient (paper: 0.02).
        normalize: divide each head's count by the number of codes it uses.
        only_correct: with a Task, keep as positive only the clean prompts the model predicts
            correctly (its top next-token at ``answer_pos`` is one of the answers), as the paper does.

    Returns head Scores (``a{layer}.h{head}``), method ``"discrete-sae"``.
    """
    positive, pos_lengths = _lengths_of(positive_task_or_tokens)
    if negative_tokens is None:
        if not isinstance(positive_task_or_tokens, Task):
            raise InputError("give negative_tokens (prompts where the model cannot do the task), or pass a Task "
                             "whose corrupted prompts are the negative ones")
        negative, neg_lengths = positive_task_or_tokens.corrupted, pos_lengths
    else:
        negative, neg_lengths = torch.as_tensor(negative_tokens), None
    if isinstance(positive_task_or_tokens, Task):
        positive_task_or_tokens.check_model(model)
        if only_correct:
            correct = _predicts_correctly(model, positive_task_or_tokens)
            if not bool(correct.any()):
                raise InputError(f"the model gets none of the {len(correct)} prompts of task "
                                 f"{positive_task_or_tokens.name!r} right; pass only_correct=False to use them all")
            positive, pos_lengths = positive[correct], pos_lengths[correct]
    if n_latents < 2:
        raise InputError(f"n_latents={n_latents}: the code SAE needs at least 2 latents")
    pos_vec = head_output_means(model, positive, pos_lengths)
    neg_vec = head_output_means(model, negative, neg_lengths)
    d_model = pos_vec.shape[-1]
    both = torch.cat([pos_vec, neg_vec]).reshape(-1, d_model)
    # One global scale so the L1 coefficient means the same on any model: mean norm sqrt(d_model).
    scale = math.sqrt(d_model) / both.norm(dim=-1).mean().clamp_min(1e-8)
    sae = train_code_sae(both * scale, n_latents, l1, steps, lr=lr, seed=seed, progress=progress)
    grid = unique_code_scores(codes_of(sae, pos_vec * scale), codes_of(sae, neg_vec * scale), normalize)
    task_name = positive_task_or_tokens.name if isinstance(positive_task_or_tokens, Task) else ""
    return Scores.from_head_grid(grid, "discrete-sae", task=task_name,
                                 meta={"n_latents": n_latents, "l1": l1, "steps": steps, "normalize": normalize,
                                       "n_positive": len(pos_vec), "n_negative": len(neg_vec)})
