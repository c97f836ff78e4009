"""Issue 32 benchmark: the same methods on one model through TransformerLens's two model classes.

A random-weight GPT-2-small-shaped Hugging Face folder (12 layers x 12 heads, d_model 768, d_mlp
3072; vocabulary 2,048 so the unembedding does not dominate) is loaded twice by
``circuitkit.load_model``: as a ``HookedTransformer`` and as a ``TransformerBridge``. In one process,
warmed up, alternating the two (A B A B ...), best of ``--repeats``, each method is timed and its
peak added resident memory measured (``benchmarks/scale.py``'s ``measure``), the seconds in one
worker process under the default allocator and the peaks in a second (one round after the
warm-up) with glibc told to return freed blocks at once, so what one run freed does not hide the
next run's peak (``scale.run_timed_and_measured``):

* ``patching``: activation patching of every head's output (144 patches) on ``--patch-prompts``
  prompts of ``--patch-len`` tokens;
* ``eap``: EAP over all 32,491 edges on ``--prompts`` x ``--len`` tokens;
* ``eap_ig``: EAP-IG (``--steps``, inputs) on the same.

Each line prints both models' seconds and MB and the bridge / HookedTransformer ratios, and checks
that the two give the same scores (max difference relative to the scale). The bridge cannot start
a run at a layer or reuse a KV-cache prefix (TransformerLens leaves its layer loop to Hugging
Face), so its patched runs recompute the layers below the patch; EAP and EAP-IG run whole
forward and backward passes on both. Run::

    OMP_NUM_THREADS=2 python benchmarks/bridge.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scale import measure, run_timed_and_measured  # noqa: E402  (the benchmarks' shared measurement)

import circuitkit as ck  # noqa: E402
from circuitkit.models import backend  # noqa: E402
from circuitkit.tasks.task import Task  # noqa: E402

MiB = 2 ** 20


def gpt2_small_folder(path: str, vocab: int) -> None:
    """A random GPT-2-small-shaped model saved as a Hugging Face folder (weights only)."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=256, n_embd=768, n_layer=12, n_head=12,
                                  activation_function="gelu_new")
    transformers.GPT2LMHeadModel(cfg).eval().save_pretrained(path)


def random_task(vocab: int, n: int, length: int, seed: int = 0) -> Task:
    gen = torch.Generator().manual_seed(seed)
    return Task("random", torch.randint(0, vocab, (n, length), generator=gen),
                torch.randint(0, vocab, (n, length), generator=gen),
                torch.randint(0, vocab, (n, 1), generator=gen), torch.randint(0, vocab, (n, 2), generator=gen))


def worker(spec: dict) -> dict:
    """Every method on both models in this one process: ``{method: {"hooked" / "bridge": [seconds,
    peak bytes], "diff": max |difference| / scale}}``, each the best of ``spec["repeats"]`` rounds
    after a warm-up round."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    with tempfile.TemporaryDirectory() as folder:
        gpt2_small_folder(folder, spec["vocab"])
        models = {"hooked": ck.load_model(folder, device="cpu", backend="hooked"),
                  "bridge": ck.load_model(folder, device="cpu", backend="bridge")}
    backend.audit(models["bridge"])  # measured once per model, not inside a timing
    task = random_task(spec["vocab"], spec["prompts"], spec["len"])
    patch_task = random_task(spec["vocab"], spec["patch_prompts"], spec["patch_len"], seed=1)
    runs = {
        "patching": lambda m: ck.activation_patching(m, patch_task, "head_out", progress=False).values,
        "eap": lambda m: ck.eap(m, task, progress=False).values,
        "eap_ig": lambda m: ck.eap_ig(m, task, steps=spec["steps"], progress=False).values,
    }
    results = {}
    for name in spec["methods"]:
        fn = runs[name]
        best: dict[str, tuple[float, float]] = {}
        values = {}
        for rep in range(spec["repeats"] + 1):  # the first round warms both up and is not counted
            for kind, model in models.items():
                seconds, peak, out = measure(lambda model=model, fn=fn: fn(model))
                values[kind] = out
                if rep and (kind not in best or seconds < best[kind][0]):
                    best[kind] = (seconds, peak)
        diff = float((values["bridge"] - values["hooked"]).abs().max() / values["hooked"].abs().max())
        results[name] = dict(best, diff=diff)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--len", type=int, default=64)
    parser.add_argument("--patch-prompts", type=int, default=8)
    parser.add_argument("--patch-len", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--methods", default="patching,eap,eap_ig")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    spec = dict(prompts=args.prompts, len=args.len, patch_prompts=args.patch_prompts, patch_len=args.patch_len,
                steps=args.steps, repeats=args.repeats, vocab=args.vocab, methods=args.methods.split(","))
    (timed, error), (measured, mem_error) = run_timed_and_measured(__file__, "--worker", spec)
    if timed is None or measured is None:
        sys.exit(error or mem_error)
    print(f"GPT-2-small shape, vocabulary {args.vocab}; eap / eap_ig on {args.prompts} x {args.len} tokens, "
          f"patching on {args.patch_prompts} x {args.patch_len}; torch threads "
          f"{os.environ.get('OMP_NUM_THREADS', '(unset)')}; best of {args.repeats} after a warm-up, alternating")
    print(f"{'method':10s} {'hooked s':>9s} {'bridge s':>9s} {'ratio':>6s} {'hooked MB':>10s} {'bridge MB':>10s} "
          f"{'ratio':>6s} {'max |diff| / scale':>19s}")
    for name in spec["methods"]:
        th, tb = timed[name]["hooked"][0], timed[name]["bridge"][0]
        mh, mb = measured[name]["hooked"][1], measured[name]["bridge"][1]
        print(f"{name:10s} {th:9.2f} {tb:9.2f} {tb / th:6.2f} {mh / MiB:10.0f} {mb / MiB:10.0f} "
              f"{mb / max(mh, 1):6.2f} {timed[name]['diff']:19.2e}")


if __name__ == "__main__":
    main()
