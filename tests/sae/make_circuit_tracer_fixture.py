"""Write ``data/circuit_tracer_graph.json`` (+ ``circuit_tracer_weights.safetensors``): circuit-tracer's
own attribution graph of one prompt on a tiny random model with random ReLU transcoders at every
MLP, the oracle of ``test_sae_linear.py::test_edges_equal_circuit_tracers_graph``.

Run: ``pip install --no-deps circuit-tracer==0.5.0`` (its other imports are in circuitkit's
environment) then ``python tests/sae/make_circuit_tracer_fixture.py``. circuit-tracer 0.5 imports
``huggingface_hub.constants.HF_HUB_ENABLE_HF_TRANSFER``, which newer huggingface_hub dropped; the
shim below sets it and changes nothing else. The model and transcoder weights are saved
(safetensors) so the test rebuilds exactly the same replacement model without circuit-tracer.
Its graph is read as its docstring defines it: ``adjacency_matrix[target, source]`` over
``[active features, errors (layer, pos), tokens, logits]``; the logit node is a custom target
whose direction is ``W_U[:, answer] - W_U[:, wrong]``, the task's logit difference.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import huggingface_hub.constants
import torch
from safetensors.torch import save_file

huggingface_hub.constants.HF_HUB_ENABLE_HF_TRANSFER = False
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from circuit_tracer.attribution.attribute import attribute  # noqa: E402
from circuit_tracer.attribution.targets import CustomTarget  # noqa: E402
from circuit_tracer.replacement_model.replacement_model_transformerlens import (  # noqa: E402
    TransformerLensReplacementModel,
)
from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder, TranscoderSet  # noqa: E402
from model_factory import make_model  # noqa: E402

from circuitkit.tasks.builders import default_words, ioi  # noqa: E402
from circuitkit.tokenizers import word_level_tokenizer  # noqa: E402

DATA = Path(__file__).parent / "data"
D_TRANSCODER = 10


def main() -> None:
    tok = word_level_tokenizer(default_words())
    model = make_model(tok)
    cfg = model.cfg
    torch.manual_seed(0)
    transcoders = {}
    for layer in range(cfg.n_layers):
        t = SingleLayerTranscoder(cfg.d_model, D_TRANSCODER, torch.nn.functional.relu, layer,
                                  device=torch.device("cpu"), dtype=torch.float32)
        with torch.no_grad():
            t.W_enc.normal_(0, 0.3)
            t.W_dec.normal_(0, 0.3)
            t.b_enc.uniform_(-0.1, 0.3)
            t.b_dec.uniform_(-0.1, 0.1)
        transcoders[layer] = t
    replacement = TransformerLensReplacementModel.from_config(
        cfg, TranscoderSet(transcoders, feature_input_hook="ln2.hook_normalized", feature_output_hook="hook_mlp_out"))
    replacement.load_state_dict(model.state_dict(), strict=False)
    replacement.tokenizer = tok
    task = ioi(tok, n_prompts=1)
    tokens = task.clean[0]
    direction = (model.W_U[:, task.answers[0, 0]] - model.W_U[:, task.wrong_answers[0, 0]]).detach()
    graph = attribute(tokens, replacement, attribution_targets=[CustomTarget("logit_diff", 1.0, direction)],
                      batch_size=64)
    n_pos, n_layers = len(tokens), cfg.n_layers
    ids = [f"f{layer}.mlp_out.{f}@{p}" for layer, p, f in graph.active_features.tolist()]
    ids += [f"e{layer}.mlp_out@{p}" for layer in range(n_layers) for p in range(n_pos)]
    ids += [f"token@{p}" for p in range(n_pos)] + ["logits"]
    adjacency = graph.adjacency_matrix
    edges = {f"{ids[s]}->{ids[t]}": float(adjacency[t, s]) for t, s in torch.nonzero(adjacency).tolist()}
    weights = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    for layer, t in transcoders.items():
        weights.update({f"transcoder.{layer}.{k}": getattr(t, k).detach().contiguous()
                        for k in ("W_enc", "W_dec", "b_enc", "b_dec")})
    DATA.mkdir(exist_ok=True)
    save_file(weights, str(DATA / "circuit_tracer_weights.safetensors"))
    out = {"circuit_tracer": "0.5.0", "tokens": tokens.tolist(), "d_transcoder": D_TRANSCODER,
           "feature_input_hook": "ln2.hook_normalized", "edges": edges}
    (DATA / "circuit_tracer_graph.json").write_text(json.dumps(out, indent=0, sort_keys=True) + "\n")
    print(f"wrote {DATA}: {len(edges)} edges, {len(graph.active_features)} active features")


if __name__ == "__main__":
    main()
