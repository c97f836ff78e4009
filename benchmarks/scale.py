"""Issue 23 benchmark: attribution at real model sizes, beside the compute floor of the same run.

Random-weight models of two real shapes (TransformerLens ``HookedTransformerConfig``; vocabulary
2,048 tokens so that the unembedding does not dominate):

* ``gpt2``: GPT-2 small, 12 layers x 12 heads, d_model 768, d_mlp 3072, LayerNorm, learned
  positions (32,491 edges with q / k / v separate);
* ``pythia``: Pythia-410m, 24 layers x 16 heads, d_model 1024, d_mlp 4096, parallel attention and
  MLP, rotary (rotary_dim 16).

For each shape and prompt length (16 induction prompts by default) one worker process measures a
forward pass, a forward + backward pass (gradient to the input embeddings, what attribution
needs), ``eap`` (and, up to 1,024 tokens in all, ``eap`` given the ablation source, as a
discovery's prepared context gives it), ``eap_ig`` (``--steps``), node attribution
(``head_out``), exact edge patching of EAP's top ``--top-k`` edges, and auto-circuit's EAP where
``auto-circuit`` is installed. Every callable is run once to warm up, then ``--repeats`` rounds
run them all in turn, so floors and methods alternate, and the best time of each is kept: cold
first calls and other programs' load distort separate-process timings several-fold, and
side-by-side best-of-N ratios are what stays comparable between machines.

Each line: seconds (from a worker under the default allocator), peak added memory (from a second
worker, one round after the warm-up: the process's resident-set high-water mark, reset before
each measurement through ``/proc/self/clear_refs``, minus the resident set at its start; glibc
is told to hand freed blocks back at once, ``MALLOC_MMAP_THRESHOLD_``, which would double the
timings if they were taken there), and the ratio to the method's floor. Each floor is timed with
the prompts in one batch, in halves and in quarters (``floor_batchings``), and its fastest
batching counts: EAP = 1 forward + backward (its corrupted forward not counted; the lines "eap's
bare passes" time that forward + backward followed by the corrupted forward, without hooks or
contraction: the lowest ratio EAP could reach), EAP-IG = steps x forward + backward + 2 forwards
(clean and corrupted outputs), node attribution = forward + backward + forward, exact edge
patching of k edges = k + 1 forwards. "kernel s" and "faulted GiB" (timing worker, the best round):
the process's system time during the call and the memory it faulted in (minor page faults x page
size); where a method's excess over its floor is kernel time, it is memory being faulted in, not
the method's arithmetic. ``--retrieval`` adds retrieval scores on needle prompts of
the given lengths beside a bare forward pass over the same prompts.

Run (the default plan runs fewer methods at the larger sizes; each floor is timed at three batchings)::

    OMP_NUM_THREADS=2 python benchmarks/scale.py
    OMP_NUM_THREADS=2 python benchmarks/scale.py --shapes gpt2 --lengths 256 --methods eap,eap_ig --steps 2
    OMP_NUM_THREADS=2 python benchmarks/scale.py --shapes gpt2 --lengths none --retrieval 1024,4096
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SHAPES = {
    "gpt2": dict(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, act_fn="gelu_new",
                 normalization_type="LN", positional_embedding_type="standard"),
    "pythia": dict(n_layers=24, d_model=1024, n_heads=16, d_head=64, d_mlp=4096, act_fn="gelu",
                   normalization_type="LN", positional_embedding_type="rotary", rotary_dim=16,
                   parallel_attn_mlp=True),
}
METHODS = ("eap", "eap_ig", "nodes", "exact_topk", "auto_circuit")
FLOOR_LABELS = {"forward": "forward", "forward+backward": "forward+backward",
                "eap_passes": "eap's bare passes"}
# the default run: fewer methods at the larger sizes
# (``eap_ig:2``: EAP-IG with 2 steps there, whatever ``--steps`` says; memory does not depend on steps)
DEFAULT_PLAN = {("gpt2", 20): METHODS, ("gpt2", 64): ("eap", "eap_ig", "nodes"), ("gpt2", 256): ("eap", "eap_ig:2"),
                ("pythia", 20): ("eap", "eap_ig"), ("pythia", 64): ("eap",), ("pythia", 256): ()}
GiB = 2 ** 30
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout's circuitkit, in every worker


# --- measurement (worker side) ----------------------------------------------------------------

def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise KeyError(key)


def measure(fn):
    """``(seconds, peak added bytes, result)`` of ``fn()``."""
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the resident-set high-water mark
    start_rss = _status_kib("VmRSS:")
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM:")
    return seconds, (peak - start_rss) * 1024, out


def build_model(shape: str, n_ctx: int):
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(**SHAPES[shape], d_vocab=2048, n_ctx=n_ctx, seed=0, device="cpu",
                                  model_name=f"random-{shape}-shape")
    model = HookedTransformer(cfg)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(0)
    return model


def induction_task(n_prompts: int, n_pos: int, seed: int = 0):
    """Repeated random tokens ``r1..rL r1..r(L-1) -> rL`` (``2L = n_pos + 1``), corrupted first half."""
    import torch

    from circuitkit.tasks.task import Task

    gen = torch.Generator().manual_seed(seed)
    half = (n_pos + 1) // 2
    seq = torch.stack([torch.randperm(2000, generator=gen)[: 2 * half + 1] + 10 for _ in range(n_prompts)])
    first, other, wrong = seq[:, :half], seq[:, half: 2 * half], seq[:, -1]
    clean = torch.cat([first, first], 1)[:, :n_pos]
    corrupted = torch.cat([other, first], 1)[:, :n_pos]
    answers = first[:, (n_pos - half) % half]
    return Task("induction", clean, corrupted, answers[:, None], wrong[:, None], d_vocab=2048)


def floor_batchings(n_prompts: int) -> list[int]:
    """The prompt batch sizes a floor is timed at: all prompts at once, half and a quarter of them.
    The fastest counts: a forward + backward over 16 prompts of 256 tokens at once took 2.3x the
    same work in batches of 4 on a 2-core machine (docs/benchmarks.md#scale), and a floor slower
    than it needs to be flatters every ratio."""
    return sorted({n_prompts, max(1, n_prompts // 2), max(1, n_prompts // 4)}, reverse=True)


def _floors(model, task, batch: int) -> dict:
    """Floor name -> callable: ``forward``, ``forward+backward`` and ``eap_passes``, the passes EAP
    cannot skip (clean forward + backward, corrupted forward) without its hooks or its
    contraction; each over all of ``task``'s prompts in batches of ``batch``."""
    import torch

    parts = [task.subset(torch.arange(i, min(i + batch, len(task)))) for i in range(0, len(task), batch)]

    def forward():
        with torch.no_grad():
            for part in parts:
                model(part.clean)

    leaf = {}

    def make_leaf(x, hook):
        leaf["x"] = x.detach().requires_grad_(True)
        return leaf["x"]

    def forward_backward():
        for part in parts:
            with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", make_leaf)]), torch.enable_grad():
                metric = part.score(model(part.clean))
                torch.autograd.grad(metric, leaf["x"])

    def eap_passes():
        forward_backward()
        with torch.no_grad():
            for part in parts:
                model(part.corrupted)

    return {"forward": forward, "forward+backward": forward_backward, "eap_passes": eap_passes}


def _auto_circuit_eap(model, task):
    """auto-circuit's EAP (mask gradients) on the same prompts; None when it is not installed."""
    try:
        from auto_circuit.data import PromptPair, PromptPairBatch  # noqa: F401
        from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores
        from auto_circuit.utils.graph_utils import patchable_model
    except ImportError:
        return None
    import torch

    pm = patchable_model(model, factorized=True, slice_output="last_seq", separate_qkv=True, device=torch.device("cpu"))
    batch = PromptPairBatch(0, 1, task.clean, task.corrupted, task.answers, task.wrong_answers)

    def run():
        return mask_gradient_prune_scores(model=pm, dataloader=[batch], official_edges=None, grad_function="logit",
                                          answer_function="avg_diff", mask_val=0.0)

    return run


def worker(spec: dict) -> list[dict]:
    """Every measurement of one shape and length in this one process: each callable warmed up
    once, then ``repeats`` rounds that run them all in turn (floors and methods alternate), the
    best time of each kept. Ratios are to the best floors of the same rounds."""
    import torch

    from circuitkit.attribution import attribution_patching, eap, eap_ig, exact_edge_patching

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    model = build_model(spec["shape"], max(1024, spec["n_pos"] + 1))
    task = induction_task(spec["n_prompts"], spec["n_pos"])
    steps, max_memory, methods = spec["steps"], spec["max_memory"], list(spec["methods"])
    for m in list(methods):
        if m.startswith("eap_ig:"):
            steps = int(m.split(":")[1])
            methods.append("eap_ig")
    kw = dict(ablation="corrupted", progress=False, max_memory=max_memory)
    # (name, callable, floor as {floor name: multiple}); a floor is timed at each batching, the fastest counts
    plan: list[tuple[str, object, dict]] = []
    wants_eap = "eap" in methods or "exact_topk" in methods
    # eap_passes: what EAP's ratio cannot go below, its corrupted forward on top of the floor, no edge scored
    floors: dict[str, list[str]] = {kind: [] for kind in FLOOR_LABELS if wants_eap or kind != "eap_passes"}
    by_batch = {batch: _floors(model, task, batch) for batch in floor_batchings(len(task))}
    for kind in floors:
        for batch, fns in by_batch.items():
            name = f"{FLOOR_LABELS[kind]} (batch {batch})"
            floors[kind].append(name)
            plan.append((name, fns[kind], {"forward+backward": 1} if kind == "eap_passes" else {}))
    notes = []
    if wants_eap:
        plan.append(("eap", lambda: eap(model, task, **kw), {"forward+backward": 1}))
        if task.clean.numel() <= 1024:  # the source of every prompt held: [n_nodes, tokens, d_model]
            from circuitkit.ablation import ablation_source

            source = ablation_source(model, task, "corrupted")
            plan.append(("eap (ablation source given)", lambda: eap(model, task, source=source, **kw),
                         {"forward+backward": 1}))
    if "eap_ig" in methods:
        plan.append((f"eap_ig (steps={steps})", lambda: eap_ig(model, task, steps=steps, **kw),
                     {"forward+backward": steps, "forward": 2}))
    if "nodes" in methods:
        plan.append(("attribution_patching (head_out)",
                     lambda: attribution_patching(model, task, progress=False, max_memory=max_memory),
                     {"forward+backward": 1, "forward": 1}))
    if "exact_topk" in methods:
        scores = eap(model, task, **kw)
        top = [scores.labels[i] for i in scores.values.abs().argsort(descending=True)[: spec["top_k"]]]
        plan.append((f"exact_edge_patching (top {len(top)})",
                     lambda: exact_edge_patching(model, task, edges=top, ablation="corrupted", progress=False),
                     {"forward": 1 + len(top)}))
    if "auto_circuit" in methods:
        run = _auto_circuit_eap(model, task)
        if run is None:
            notes.append(dict(method="auto-circuit eap", note="not installed (pip install auto-circuit)"))
        else:
            plan.append(("auto-circuit eap", run, {"forward+backward": 1}))
    best: dict[str, float] = {}
    peak: dict[str, float] = {}
    kernel: dict[str, tuple[float, float]] = {}  # the best round's (kernel seconds, GiB faulted in)
    for _, fn, _ in plan:  # warm-up: first calls pay allocation and dispatch costs that are no one's floor
        try:
            fn()
        except Exception as err:  # a peer's API moves between releases: report, keep the other lines
            notes.append(dict(method="(warm-up failed)", note=f"{type(err).__name__}: {err}"[:200]))
    for _ in range(spec["repeats"]):
        for name, fn, _ in plan:
            try:
                before = resource.getrusage(resource.RUSAGE_SELF)
                seconds, added, _ = measure(fn)
                after = resource.getrusage(resource.RUSAGE_SELF)
            except Exception as err:
                notes.append(dict(method=name, note=f"failed: {type(err).__name__}: {err}"[:200]))
                continue
            if seconds < best.get(name, float("inf")):
                kernel[name] = (after.ru_stime - before.ru_stime,
                                (after.ru_minflt - before.ru_minflt) * resource.getpagesize() / GiB)
            best[name] = min(best.get(name, float("inf")), seconds)
            peak[name] = max(peak.get(name, 0.0), added / GiB)
    for kind, timed in floors.items():  # each floor's fastest batching stands for it
        timed = [name for name in timed if name in best]
        if timed:
            best[kind] = min(best[name] for name in timed)
    rows = []
    for name, _, floor in plan:
        if name not in best:
            continue
        floor_s = sum(k * best[f] for f, k in floor.items()) if floor else None
        rows.append(dict(method=name, seconds=best[name], peak_added_gib=peak[name], floor_s=floor_s,
                         kernel_s=kernel[name][0], faulted_gib=kernel[name][1]))
    return rows + notes


def retrieval_worker(spec: dict) -> list[dict]:
    """Retrieval scores on random-token needle prompts (a 1-token needle in the middle:
    the token the random model itself produces at the end) beside a bare forward pass over the same prompts in one batch each."""
    import torch

    from circuitkit.heads import NeedlePrompt
    from circuitkit.heads.retrieval import retrieval_scores, teacher_forced_batch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    n_pos = spec["n_pos"]
    model = build_model(spec["shape"], n_pos + 8)
    gen = torch.Generator().manual_seed(0)
    prompts = []
    for _ in range(spec["n_prompts"]):
        tokens = torch.randint(10, 2000, (n_pos,), generator=gen)
        mid = n_pos // 2
        # a 1-token needle that the random model itself produces at the end, so the trial is kept
        with torch.no_grad():
            for _ in range(4):
                answer = model(tokens[None])[0, -1].argmax()
                if tokens[mid] == answer:
                    break
                tokens[mid] = answer
        prompts.append(NeedlePrompt(tokens, mid, mid + 1, tokens[mid: mid + 1].clone()))
    rows = []
    seconds, peak, _ = measure(lambda: teacher_forced_batch(model, prompts, []))
    rows.append(dict(method=f"bare forward ({len(prompts)} prompts)", seconds=seconds, peak_added_gib=peak / GiB))
    seconds2, peak2, _ = measure(lambda: retrieval_scores(model, prompts, batch_size=len(prompts), progress=False,
                                                          min_recall=0.0))
    rows.append(dict(method="retrieval_scores", seconds=seconds2, peak_added_gib=peak2 / GiB, floor_s=seconds,
                     memory_ratio=peak2 / max(peak, 1)))
    return rows


# --- driver -----------------------------------------------------------------------------------

# glibc told to hand every freed block back at once: a call's resident-set high-water mark is then
# what it needs, not hidden by blocks an earlier call freed. It also makes every large allocation
# fault in fresh pages, which about doubles a forward pass's time and shifts the ratios, so the
# timings come from a second worker under the default allocator.
RETURNING_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def worker_env(for_memory: bool) -> dict:
    """The environment of a worker that measures memory (glibc returning freed blocks) or time
    (the default allocator, as a user's process runs), with this checkout's circuitkit first."""
    env = {k: v for k, v in os.environ.items() if k not in RETURNING_MALLOC}
    if for_memory:
        env.update(RETURNING_MALLOC)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    return env


def run_timed_and_measured(script: str, flag: str, spec: dict) -> tuple:
    """``script flag spec`` run twice, as ``(timing worker's output, memory worker's output)``: the
    first under the default allocator with ``spec["repeats"]`` rounds, the second with glibc
    returning freed blocks and one round (peaks do not need a best of N). Each output is the JSON
    the worker prints last, or ``None`` with its error line."""
    outs = []
    for for_memory in (False, True):
        run_spec = dict(spec, repeats=1) if for_memory else spec
        proc = subprocess.run([sys.executable, script, flag, json.dumps(run_spec)], env=worker_env(for_memory),
                              capture_output=True, text=True)
        if proc.returncode != 0:
            outs.append((None, (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]))
        else:
            outs.append((json.loads(proc.stdout.strip().splitlines()[-1]), None))
    return tuple(outs)


def _run_worker(spec: dict, flag: str = "--worker") -> list[dict]:
    """The worker's rows: seconds (and floors) from the timing run, peaks from the memory run."""
    (timed, error), (measured, mem_error) = run_timed_and_measured(__file__, flag, spec)
    if timed is None or measured is None:
        return [dict(method="(worker failed)", note=error or mem_error)]
    peaks = {r["method"]: r for r in measured if "seconds" in r}
    for row in timed:
        if row["method"] in peaks:
            row.update({k: v for k, v in peaks[row["method"]].items() if k in ("peak_added_gib", "memory_ratio")})
    return timed


def _print(shape: str, n_pos: int, n_prompts: int, rows: list[dict]) -> None:
    print(f"\n{shape}-shape, {n_prompts} prompts x {n_pos} tokens")
    kernel = any("kernel_s" in r for r in rows)
    print(f"  {'method':42s} {'seconds':>8s} {'x floor':>8s} {'peak added GiB':>15s}"
          + (f" {'kernel s':>9s} {'faulted GiB':>12s}" if kernel else ""))
    for r in rows:
        if "seconds" not in r:
            print(f"  {r['method']:42s} {r.get('note', '')}")
            continue
        ratio = f"{r['seconds'] / r['floor_s']:.2f}" if r.get("floor_s") else ""
        mem = f"{r['peak_added_gib']:.2f}"
        if "memory_ratio" in r:
            mem += f" ({r['memory_ratio']:.2f}x the bare forward)"
        extra = f" {r['kernel_s']:9.2f} {r['faulted_gib']:12.2f}" if "kernel_s" in r else ""
        print(f"  {r['method']:42s} {r['seconds']:8.2f} {ratio:>8s} {mem:>15s}{extra}")
    sys.stdout.flush()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="gpt2,pythia")
    ap.add_argument("--lengths", default="20,64,256", help="prompt lengths, or 'none'")
    ap.add_argument("--methods", default=None, help=f"comma-separated from {METHODS}; default: fewer methods at "
                                                     "the larger sizes (DEFAULT_PLAN)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2, help="timed rounds after the warm-up; the best is kept")
    ap.add_argument("--max-memory-gib", type=float, default=3.0, help="attribution's max_memory")
    ap.add_argument("--retrieval", default="", help="needle context lengths, e.g. 1024,4096 (GPT-2 shape)")
    ap.add_argument("--retrieval-prompts", type=int, default=2)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--retrieval-worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.retrieval_worker:
        print(json.dumps(retrieval_worker(json.loads(args.retrieval_worker))))
        return
    lengths = [] if args.lengths == "none" else [int(x) for x in args.lengths.split(",")]
    print(f"threads: {os.environ.get('OMP_NUM_THREADS', '(unset)')}; max_memory {args.max_memory_gib} GiB; "
          f"EAP-IG steps {args.steps}; warm-up + best of {args.repeats} alternating rounds")
    t0 = time.perf_counter()
    for shape in args.shapes.split(","):
        for n_pos in lengths:
            methods = args.methods.split(",") if args.methods else list(DEFAULT_PLAN.get((shape, n_pos), METHODS))
            if not methods:
                continue
            spec = dict(shape=shape, n_pos=n_pos, n_prompts=args.prompts, steps=args.steps, methods=methods,
                        top_k=args.top_k, max_memory=args.max_memory_gib * GiB, repeats=args.repeats)
            _print(shape, n_pos, args.prompts, _run_worker(spec))
    for n_pos in [int(x) for x in args.retrieval.split(",") if x]:
        spec = dict(shape="gpt2", n_pos=n_pos, n_prompts=args.retrieval_prompts)
        rows = _run_worker(spec, "--retrieval-worker")
        _print("gpt2 (retrieval)", n_pos, args.retrieval_prompts, rows)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
