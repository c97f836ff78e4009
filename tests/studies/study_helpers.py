"""Spec builders shared by the study tests."""


def small_spec(out, **overrides) -> dict:
    spec = {
        "models": ["zoo:tiny-attn", "zoo:tiny-mlp"],
        "tasks": [{"name": "induction", "params": {"n_prompts": 6, "seq_len": 5}},
                  {"name": "ioi", "params": {"n_prompts": 6}}],
        "ablations": ["zero", "mean", "resample"],
        "targets": {"every_head": True},
        "metrics": ["logit_diff", "accuracy"],
        "seeds": [0],
        "batch_size": 4,
        "output_dir": str(out),
    }
    spec.update(overrides)
    return spec
