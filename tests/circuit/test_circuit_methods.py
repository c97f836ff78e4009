"""The registry of discovery methods: every registered method runs through discover and the CLI with
its own defaults, its hyper-parameters reach it (counted, not read back), unknown ones are refused,
one discovery computes its ablation source once, and a new method is one register call."""

import pytest
import torch

import circuitkit as ck
from circuitkit.ablation import edges as edge_engine
from circuitkit.circuit.discovery import DISCOVERY_METHODS, discover, register, score_edges
from circuitkit.circuit.discovery import mask_learning as edge_pruning_module
from circuitkit.cli import main
from circuitkit.scores import Scores

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ZOO = "induction-handbuilt"


@pytest.fixture(scope="module")
def zoo():
    return ck.load_model(f"zoo:{ZOO}"), ck.zoo_task(ZOO)


def test_edge_pruning_runs_the_steps_given_on_the_command_line(tmp_path, monkeypatch):
    """``--method-arg steps=500`` reaches edge pruning: 500 gated forward passes with gradients
    (plus none other), where ``--steps`` was once dropped on the way."""
    runs = []
    real = edge_pruning_module.run_with_mask

    def counting(*args, **kwargs):
        runs.append(torch.is_grad_enabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(edge_pruning_module, "run_with_mask", counting)
    out = tmp_path / "c.json"
    assert main(["discover", f"zoo:{ZOO}", "--method", "edge-pruning", "--method-arg", "steps=500",
                 "--method-arg", "batch_size=8", "--top-k", "5", "--out", str(out), "--no-progress"]) == 0
    assert sum(runs) == 500
    circuit = ck.load_circuit(out)
    assert circuit.meta["method_args"]["steps"] == 500 and circuit.meta["method_args"]["lr"] == 0.1
    runs.clear()
    assert main(["discover", f"zoo:{ZOO}", "--method", "edge-pruning", "--steps", "7", "--top-k", "5",
                 "--out", str(out), "--no-progress"]) == 0
    assert sum(runs) == 7


@pytest.mark.parametrize("name", list(DISCOVERY_METHODS))
def test_every_registered_method_discovers_with_its_defaults(zoo, name):
    model, task = zoo
    method = DISCOVERY_METHODS[name]
    args = {"steps": 20} if name == "edge-pruning" else {}  # fewer steps: the default is slow to run here
    circuit = discover(model, task, name, top_k=None if method.prunes else 6, method_args=args)
    assert circuit.meta["discovery"] == name and circuit.meta["method_args"] == {**method.params, **args}
    assert 0 < len(circuit.edges) and circuit.meta["faithfulness"] == pytest.approx(
        ck.evaluate(model, task, circuit).faithfulness)


@pytest.mark.parametrize("name, args, match", [
    ("eap", {"steps": 5}, r"discovery method 'eap' takes no \['steps'\]; it takes qk_fix, batch_size, max_memory"),
    ("edge-pruning", {"steps": "many"}, r"steps must be like its default 300, got 'many' \(str\)"),
    ("edge-pruning", {"lr": True}, "lr must be like its default 0.1"),
    ("exact", {"batch_size": 2.5}, "batch_size must be like its default 64"),
])
def test_a_parameter_a_method_does_not_take_is_refused(zoo, name, args, match):
    model, task = zoo
    with pytest.raises(ValueError, match=match):
        discover(model, task, name, top_k=3, method_args=args)


def test_shorthands_and_method_args_agree_or_are_refused(zoo):
    model, task = zoo
    with pytest.raises(ValueError, match="takes no"):
        discover(model, task, "eap", steps=5)
    with pytest.raises(ValueError, match="steps given twice"):
        discover(model, task, "eap-ig", steps=5, method_args={"steps": 6})
    with pytest.raises(ValueError, match=r"unknown discovery method 'no-such-method'"):
        discover(model, task, "no-such-method")


def test_a_cli_method_arg_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(["discover", f"zoo:{ZOO}", "--method", "eap", "--method-arg", "steps=5", "--out", str(out),
                 "--no-progress"]) == 2
    assert "takes no ['steps']" in capsys.readouterr().err and not out.exists()
    assert main(["discover", f"zoo:{ZOO}", "--method-arg", "steps", "--out", str(out), "--no-progress"]) == 2
    assert "--method-arg 'steps': expected KEY=VALUE" in capsys.readouterr().err


@pytest.mark.parametrize("ablation", ["mean", "corrupted", "resample"])
@pytest.mark.parametrize("name", ["eap-ig", "edge-pruning", "exact"])
def test_one_discovery_computes_its_ablation_source_once(zoo, monkeypatch, ablation, name):
    """Scoring and evaluation share the prepared context's source: the node outputs of each
    source prompt are computed once (the full model's own run is not a source run)."""
    model, task = zoo
    seen = []
    real = edge_engine.node_outputs

    def counting(model, tokens):
        seen.append(tokens.shape[0])
        return real(model, tokens)

    monkeypatch.setattr(edge_engine, "node_outputs", counting)
    args = {"steps": 3} if name in ("eap-ig", "edge-pruning") else {}
    discover(model, task, name, top_k=4, ablation=ablation, method_args=args)
    assert sum(seen) == len(task)


def test_a_new_method_is_one_register_call(zoo, tmp_path):
    """A method added with register() alone is reachable from discover, score_edges and the CLI
    (choices and --method-arg), with its parameters checked like the built-in ones."""
    model, task = zoo

    def scramble(model, task, *, ablation, progress, source, seed=0):
        exact = ck.exact_edge_patching(model, task, ablation=ablation, progress=progress, source=source)
        noise = torch.randn(len(exact), generator=torch.Generator().manual_seed(seed)) * 1e-6
        return Scores(exact.values + noise, exact.labels, "scramble", task.name, task.metric_name, meta=exact.meta)

    register("scramble", scramble, "exact scores plus tiny noise", params=("seed",))
    try:
        assert score_edges(model, task, "scramble", method_args={"seed": 3}).method == "scramble"
        out = tmp_path / "c.json"
        assert main(["discover", f"zoo:{ZOO}", "--method", "scramble", "--method-arg", "seed=4", "--top-k", "3",
                     "--out", str(out), "--no-progress"]) == 0
        assert ck.load_circuit(out).meta["method_args"] == {"seed": 4}
    finally:
        del DISCOVERY_METHODS["scramble"]
