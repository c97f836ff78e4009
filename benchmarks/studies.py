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

    from circuitkit.tasks.builders import default_words
    from circuitkit.tokenizers import word_level_tokenizer
    from circuitkit.zoo import ZooCard, save_zoo_model
    from circuitkit.zoo.registry import config_to_json

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
    from circuitkit import load_model
    from circuitkit.studies import StudySpec, run_study
    from circuitkit.studies.spec import build_unit_task

    tmp = Path(tempfile.mkdtemp(prefix="study-bench-"))
    make_zoo(tmp / "zoo")
    os.environ["CIRCUITKIT_ZOO_PATH"] = str(tmp / "zoo")
    spec = {
        "models": ["zoo:bench-a", "zoo:bench-b"],
        "tasks": [{"name": "ioi", "params": {"n_prompts": 16}}, {"name": "induction", "params": {"n_prompts": 16}}],
        "ablations": ["zero", "mean", "resample"], "targets": {"every_head": True}, "metrics": ["logit_diff"],
    }
    times = {}
    for executor, workers in (("serial", None), ("process", 2)):
        start = time.perf_counter()
        results = run_study({**spec, "output_dir": str(tmp / executor)}, executor=executor, workers=workers,
                            progress=False)
        times[executor] = time.perf_counter() - start
        n_units = len(results)
        print(f"{executor:8s} {n_units} units in {times[executor]:6.2f} s = {n_units / times[executor]:6.1f} units/s "
              "(includes model loading and worker start-up)")
    print(f"parallel / serial throughput: {times['serial'] / times['process']:.2f}x on {os.cpu_count()} cores")

    # Per-unit overhead: runner seconds per unit vs one bare forward pass over the task's prompts.
    model = load_model("zoo:bench-a")
    task = build_unit_task(StudySpec.from_dict({**spec, "output_dir": str(tmp / "x")}).tasks[0], model.tokenizer, 0)
    with torch.no_grad():
        model(task.clean)
        reps = 50
        start = time.perf_counter()
        for _ in range(reps):
            model(task.clean)
        bare = (time.perf_counter() - start) / reps
    rows = results[(results.model == "zoo:bench-a") & (results.task == "ioi")]
    serial_rows = run_study({**spec, "output_dir": str(tmp / "serial")}, progress=False)
    serial_rows = serial_rows[(serial_rows.model == "zoo:bench-a") & (serial_rows.task == "ioi")]
    for kind in ("zero", "mean", "resample"):
        per_unit = serial_rows[serial_rows.ablation == kind].seconds.median()
        print(f"{kind:8s} unit (1 ablated forward + hooks + metrics): {per_unit * 1e3:6.2f} ms = "
              f"{per_unit / bare:4.1f}x a bare forward pass ({bare * 1e3:.2f} ms, {len(task)} prompts)")
    del rows


if __name__ == "__main__":
    main()
