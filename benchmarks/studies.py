"""Study throughput: units/second unit by unit vs batched, each against a bare forward pass and
the compute floor, side by side in one run, on a GPT-2-small-shaped random model and a zoo model.

    OMP_NUM_THREADS=1 python benchmarks/studies.py

* GPT-2 small shape: 12 layers x 12 heads, d_model 768, d_mlp 3072, a 50,257-token vocabulary
  (a word-level tokenizer padded to GPT-2's size), random weights; IOI with 8 prompts, mean
  ablation of every head (144 units batched; unit by unit one head per layer, 12 units).
* ``zoo:ioi-trained`` (3 x 4 heads): IOI with 16 prompts, zero / mean / resample of every head
  (36 units, both ways), then the whole study through ``run_study`` (store, claims, compaction).

Per unit the script times, interleaved so that machine load hits all alike:
``bare``: one plain forward pass of the prompts (``model(task.clean)``); ``unit``: the
unit-by-unit path (a full forward pass with ablation hooks; mean / resample also cache reference
activations); ``batched``: :meth:`UnitRunner.run_many` on one pass of units (scores and rows
included); ``floor``: the same passes without hooks (``run_batched(..., hooks=[])``): the layers
at and above the ablated head, for the positions that can change the metric (up to the last
answer position; in the last layer the answer positions alone). The clean / corrupted baselines
and the cached clean run are computed once per (model, task, seed) and reported apart.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch


def make_gpt2_shape(root: Path) -> None:
    import itertools
    import string

    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from circuitkit.models.zoo_store import config_to_json
    from circuitkit.tasks.builders import default_words
    from circuitkit.tokenizers import word_level_tokenizer
    from circuitkit.zoo import ZooCard, save_zoo_model

    words = default_words()
    filler = ("q" + "".join(x) for x in itertools.product(string.ascii_lowercase, repeat=4))
    filler = list(itertools.islice((w for w in filler if w not in set(words)), 50257 - 4 - len(words)))  # GPT-2's size
    tok = word_level_tokenizer(words + filler)
    cfg = HookedTransformerConfig(n_layers=12, d_model=768, d_head=64, n_heads=12, d_mlp=3072, d_vocab=len(tok),
                                  n_ctx=1024, act_fn="gelu_new", normalization_type="LN", seed=0,
                                  model_name="gpt2-shape")
    model = HookedTransformer(cfg, tokenizer=tok).eval()
    save_zoo_model(model, ZooCard("gpt2-shape", "GPT-2 small shape, random weights", config_to_json(model.cfg),
                                  {"builder": "ioi", "params": {}}), tok, root=root)


def _t(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_model(name: str, spec_dict: dict, unit_filter) -> None:
    from circuitkit.patching.engine import run_batched
    from circuitkit.studies import StudySpec, UnitRunner, plan_units, validate

    spec = StudySpec.from_dict(spec_dict)
    units = plan_units(spec, validate(spec))
    runner = UnitRunner(spec)
    model_spec, task_label, seed = units[0].model, units[0].task, units[0].seed
    model = runner.model(model_spec)
    setup_base = _t(lambda: runner.baseline(model_spec, task_label, seed))
    setup_clean = _t(lambda: runner.clean_run(model_spec, task_label, seed))
    clean = runner.clean_run(model_spec, task_label, seed)
    task = runner.baseline(model_spec, task_label, seed).task
    n_prompts, seq = task.clean.shape
    print(f"\n== {name}: {model.cfg.n_layers} layers x {model.cfg.n_heads} heads, d_model {model.cfg.d_model}, "
          f"d_vocab {model.cfg.d_vocab}; {task_label} with {n_prompts} prompts of {seq} tokens "
          f"(runs cut to {clean.runs.base_tokens.shape[1]})")
    print(f"once per (model, task, seed): baselines {setup_base * 1e3:.0f} ms, cached clean run {setup_clean * 1e3:.0f} ms")

    def bare():
        with torch.no_grad():
            model(task.clean)

    bare()  # warm-up
    for kind in spec.ablations:
        todo = [u for u in units if u.ablation == kind]
        # Unit by unit, interleaved with bare forward passes.
        runner.batched = False
        t_bare = t_unit = 0.0
        sample = [u for u in todo if unit_filter(u)]
        for u in sample:
            t_bare += _t(bare)
            t_unit += _t(lambda u=u: runner.run(u))
        # Batched: one pass per chunk of units sharing the lowest ablated layer; its floor beside it.
        runner.batched = True
        k = runner.units_per_pass(todo[0])
        by_layer: dict[int, list] = {}
        for u in todo:
            by_layer.setdefault(min(int(c.split(".")[0][1:]) for c in u.components), []).append(u)
        t_batched = t_floor = 0.0
        last = model.cfg.n_layers - 1
        for layer, members in by_layer.items():
            prefix = int(clean.runs.task.answer_pos.min()) if clean.runs.prefix_ok and layer == last else 0
            for i in range(0, len(members), k):
                chunk = members[i:i + k]
                t_batched += _t(lambda chunk=chunk: runner.run_many(chunk))
                t_floor += _t(lambda chunk=chunk, layer=layer, prefix=prefix:
                              run_batched(model, clean.runs, layer, [], len(chunk), prefix=prefix))
        n_b, n_u = len(todo), len(sample)
        per_bare, per_unit = t_bare / n_u, t_unit / n_u
        per_batched, per_floor = t_batched / n_b, t_floor / n_b
        print(f"{kind:8s} unit by unit {n_u:4d} units {1 / per_unit:8.1f} units/s {per_unit * 1e3:8.2f} ms/unit "
              f"= {per_unit / per_bare:5.2f}x a bare forward ({per_bare * 1e3:.2f} ms)")
        print(f"{'':8s} batched      {n_b:4d} units {1 / per_batched:8.1f} units/s {per_batched * 1e3:8.2f} ms/unit "
              f"= {per_batched / per_bare:5.2f}x a bare forward; floor {per_floor * 1e3:.2f} ms/unit: "
              f"overhead {100 * (per_batched / per_floor - 1):+5.1f} %; {per_unit / per_batched:5.1f}x unit by unit "
              f"({k} units per pass)")


def main() -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from circuitkit.studies import run_study

    tmp = Path(tempfile.mkdtemp(prefix="study-bench-"))
    start = time.perf_counter()
    make_gpt2_shape(tmp / "zoo")
    print(f"made the GPT-2-shaped zoo model in {time.perf_counter() - start:.1f} s")
    os.environ["CIRCUITKIT_ZOO_PATH"] = str(tmp / "zoo")

    gpt2 = {"models": ["zoo:gpt2-shape"], "tasks": [{"name": "ioi", "params": {"n_prompts": 8}}],
            "ablations": ["mean"], "targets": {"every_head": True}, "metrics": ["logit_diff"],
            "output_dir": str(tmp / "gpt2")}
    bench_model("GPT-2 small shape (random weights)", gpt2, lambda u: u.target.endswith(".h0"))
    zoo = {"models": ["zoo:ioi-trained"], "tasks": [{"name": "ioi", "params": {"n_prompts": 16}}],
           "ablations": ["zero", "mean", "resample"], "targets": {"every_head": True}, "metrics": ["logit_diff"],
           "output_dir": str(tmp / "zoo-study")}
    bench_model("zoo:ioi-trained", zoo, lambda u: True)

    # End to end through the store (claims, commits, compaction), serial.
    start = time.perf_counter()
    results = run_study(zoo, progress=False)
    seconds = time.perf_counter() - start
    print(f"\nrun_study serial (zoo:ioi-trained, {len(results)} units, store included): {seconds:.2f} s = "
          f"{len(results) / seconds:.1f} units/s end to end (model loading included); "
          f"{sorted(p.name[:8] for p in (tmp / 'zoo-study' / 'parts').iterdir())} on disk")


if __name__ == "__main__":
    main()
