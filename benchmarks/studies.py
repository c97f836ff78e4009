"""Study runner throughput: units/second serial vs process-parallel (2 workers), and the runner's
overhead per unit against a bare forward pass of the same batch.

    OMP_NUM_THREADS=1 python benchmarks/studies.py

Uses a temporary zoo of two random 2-layer x 4-head models (word-level tokenizer), tasks ioi and
induction with 16 prompts, zero / mean / resample ablation of every head: 96 units.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path


def make_zoo(root: Path) -> None:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from circuitkit.models.zoo_store import config_to_json
    from circuitkit.tasks.builders import default_words
    from circuitkit.tokenizers import word_level_tokenizer
    from circuitkit.zoo import ZooCard, save_zoo_model

    tok = word_level_tokenizer(default_words())
    for name, seed in (("bench-a", 1), ("bench-b", 2)):
        cfg = HookedTransformerConfig(n_layers=2, d_model=64, d_head=16, n_heads=4, d_mlp=256, d_vocab=len(tok),
                                      n_ctx=64, act_fn="gelu", normalization_type="LN", seed=seed, model_name=name)
        model = HookedTransformer(cfg, tokenizer=tok).eval()
        save_zoo_model(model, ZooCard(name, "benchmark model", config_to_json(model.cfg),
                                      {"builder": "ioi", "params": {}}), tok, root=root)


def main() -> None:
    import torch

    torch.set_num_threads(1)
    from circuitkit.studies import StudySpec, run_study

    tmp = Path(tempfile.mkdtemp(prefix="study-bench-"))
    make_zoo(tmp / "zoo")
    os.environ["CIRCUITKIT_ZOO_PATH"] = str(tmp / "zoo")
    spec = {
        "models": ["zoo:bench-a", "zoo:bench-b"],
        "tasks": [{"name": "ioi", "params": {"n_prompts": 16}}, {"name": "induction", "params": {"n_prompts": 16}}],
        "ablations": ["zero", "mean", "resample"], "targets": {"every_head": True}, "metrics": ["logit_diff"],
    }
    import pyarrow.parquet as pq

    from circuitkit.studies.store import part_files

    times, warm = {}, {}
    for executor, workers in (("serial", None), ("process", 2)):
        start = time.perf_counter()
        results = run_study({**spec, "output_dir": str(tmp / executor)}, executor=executor, workers=workers,
                            progress=False)
        times[executor] = time.perf_counter() - start
        n_units = len(results)
        # Warm throughput: units committed between the first and the last part file (start-up excluded).
        stamps = sorted(p.stat().st_mtime for p in part_files(tmp / executor))
        first_rows = len(pq.read_table(min(part_files(tmp / executor), key=lambda p: p.stat().st_mtime)))
        warm[executor] = (n_units - first_rows) / max(stamps[-1] - stamps[0], 1e-9)
        print(f"{executor:8s} {n_units} units in {times[executor]:6.2f} s = {n_units / times[executor]:6.1f} units/s "
              f"end to end (model loading, worker start-up); warm: {warm[executor]:6.1f} units/s")
    print(f"parallel / serial, end to end: {times['serial'] / times['process']:.2f}x; warm: "
          f"{warm['process'] / warm['serial']:.2f}x on {os.cpu_count()} cores")

    # Per-unit overhead, measured interleaved with bare forward passes of the same prompts:
    # a unit = hooks (+ reference activations for mean / resample) + ablated forward + metrics + commit.
    from circuitkit.studies import UnitRunner, plan_units, validate
    from circuitkit.studies.store import commit_rows, prepare

    study = StudySpec.from_dict({**spec, "output_dir": str(tmp / "overhead")})
    prepare(study.output_dir)
    runner = UnitRunner(study)
    units = [u for u in plan_units(study, validate(study)) if u.model == "zoo:bench-a" and u.task == "ioi"]
    model = runner.model("zoo:bench-a")
    runner.run(units[0])  # loads the model and caches the clean / corrupted baselines
    task = runner.baseline("zoo:bench-a", "ioi", 0).task
    for kind in ("zero", "mean", "resample"):
        bare = unit = 0.0
        todo = [u for u in units if u.ablation == kind]
        for u in todo:
            start = time.perf_counter()
            with torch.no_grad():
                model(task.clean)
            mid = time.perf_counter()
            commit_rows(study.output_dir, [runner.run(u)])
            bare += mid - start
            unit += time.perf_counter() - mid
        print(f"{kind:8s} unit incl. commit: {unit / len(todo) * 1e3:6.2f} ms vs bare forward {bare / len(todo) * 1e3:6.2f} ms "
              f"({len(task)} prompts): overhead {unit / bare:4.2f}x")


if __name__ == "__main__":
    main()
