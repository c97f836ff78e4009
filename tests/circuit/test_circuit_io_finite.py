"""NaN / Infinity scores in a circuit file are refused when read (every format), naming the cause."""

import pytest
import torch

from circuitkit import Scores, names
from circuitkit.circuit import FORMATS, Circuit, load_circuit, save_circuit

SUFFIX = {"graphml": "graphml", "gexf": "gexf"}


@pytest.fixture
def circuit():
    edges = names.all_edges(2, 2, True)
    values = torch.randn(len(edges), generator=torch.Generator().manual_seed(1))
    circuit = Circuit.from_scores(Scores(values, edges, "eap", meta={"n_layers": 2, "n_heads": 2, "has_mlp": True})).top_k(6)
    circuit.meta["d_model"] = 16  # what the EAP-IG / MIB format must record
    circuit.meta["example_prompt"] = {"prompt": "a b c", "prompt_tokens": ["a", " b", " c"], "logit": [" d", 0.5]}
    return circuit


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores_are_refused(circuit, tmp_path, fmt, bad):
    edge = circuit.edges[0]
    circuit.edge_data(edge)["score"] = bad
    path = tmp_path / f"c.{SUFFIX.get(fmt, 'json')}"
    try:
        save_circuit(circuit, path, fmt)
    except ValueError as refused:  # a writer that refuses at once is better still; then nothing is written
        assert "finite" in str(refused) and not path.exists()
        return
    with pytest.raises(ValueError, match=r"(NaN|Infinity|-Infinity|nan|inf).*not a (finite )?number"):
        load_circuit(path)


def test_finite_scores_still_load(circuit, tmp_path):
    path = tmp_path / "c.json"
    save_circuit(circuit, path)
    assert load_circuit(path) == circuit
