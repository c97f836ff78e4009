"""Bad inputs through the command line, in-process: each exits non-zero with ONE line on stderr
naming the problem (``circuitkit CMD: error: ...``, or argparse's ``usage:`` lines plus one
``error:`` line, exit 2), never a traceback, and leaves no file behind (no output, no temp file).

Each case: an id, argv (``{t}`` is the case's tmp_path, which is also the working directory), a
regex the error line must match, and the files to prepare: name -> text / bytes / a JSON-able
value / a callable returning one; a name ending in ``/`` is a folder, ``readonly/`` one that
cannot be written (root ignores permission bits, so there ``os.access`` is told so). The zoo's
tiny models keep every case under a second or two.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

import pytest

from circuitkit.cli import main

HB = "zoo:induction-handbuilt"
LM = "zoo:tiny-lm"
RET = "zoo:retrieval-handbuilt"
SAE = "zoo:tiny-lm/blocks.0.hook_resid_pre"
TEXT = {"small.txt": 'def f(x):\n    """Return x plus one, for the tests."""\n    return x + 1\n' * 40}
SPEC_KEYS = "tasks: [induction]\nablations: [zero]\ntargets: {every_head: true}\n"
GOOD_SPEC = f"models: [{HB}]\n{SPEC_KEYS}"


@functools.cache
def _valid(kind: str) -> str:
    """A valid circuit file's JSON text: circuitkit node-link or EAP-IG / MIB (no circuitkit header)."""
    from circuitkit import reference_circuit
    from circuitkit.circuit.io import to_mib, to_node_link

    circuit = reference_circuit("induction-handbuilt")
    if kind == "node-link":
        return json.dumps(to_node_link(circuit))
    data = to_mib(circuit, d_model=125)
    del data["cfg"]["circuitkit"]
    return json.dumps(data)


def circuit_file(kind: str, change=None):
    """A file preparer: the valid ``kind`` circuit, changed in place by ``change(data)``."""

    def make():
        data = json.loads(_valid(kind))
        if change is not None:
            change(data)
        return data

    return make


def _first_edge(data) -> dict:
    return data["links"][0] if "links" in data else next(iter(data["edges"].values()))


def task_file(*entries, **top):
    return {**top, "prompts": list(entries)}


OK_ENTRY = {"clean": [1, 4, 5, 6], "corrupted": [1, 7, 8, 6], "answers": [4], "wrong_answers": [9]}
RO = "{t}/readonly"
FILE = "{t}/file.txt"
OUT_FILES = {"file.txt": "a file, not a folder\n", "readonly/": None, "existing/": None}

CASES = [
    # --- outputs: refused before any work (folder read-only, under a regular file, a folder, the input)
    ("discover-out-readonly", ["discover", HB, "--out", f"{RO}/c.json"], r"folder .*readonly is not writable", OUT_FILES),
    ("discover-out-under-file", ["discover", HB, "--out", f"{FILE}/c.json"], r"file\.txt is a file, not a folder", OUT_FILES),
    ("discover-out-is-folder", ["discover", HB, "--out", "{t}/existing"], r"existing is a folder; give the path of a file", OUT_FILES),
    ("discover-out-missing-folder", ["discover", HB, "--out", "{t}/no/c.json"], r"output folder .*no does not exist", {}),
    ("discover-out-unknown-suffix", ["discover", HB, "--out", "{t}/c.txt"], r"cannot tell a circuit format from the suffix '\.txt'", {}),
    ("discover-html-under-file", ["discover", HB, "--out", "{t}/c.json", "--html", f"{FILE}/c.html"], r"file\.txt is a file, not a folder", OUT_FILES),
    ("patch-out-readonly", ["patch", HB, "--out", f"{RO}/s.csv"], r"folder .*readonly is not writable", OUT_FILES),
    ("patch-out-under-file", ["patch", HB, "--out", f"{FILE}/s.csv"], r"file\.txt is a file, not a folder", OUT_FILES),
    ("patch-out-is-folder", ["patch", HB, "--out", "{t}/existing.csv"], r"existing\.csv is a folder", {"existing.csv/": None}),
    ("patch-out-suffix", ["patch", HB, "--out", "{t}/s.txt"], r"--out must end in \.csv or \.parquet", {}),
    ("heads-score-out-readonly", ["heads", "score", HB, "--kind", "induction", "--out", f"{RO}/s.csv"], r"folder .*readonly is not writable", OUT_FILES),
    ("heads-score-out-under-file", ["heads", "score", HB, "--kind", "induction", "--out", f"{FILE}/s.csv"], r"file\.txt is a file, not a folder", OUT_FILES),
    ("heads-score-out-is-folder", ["heads", "score", HB, "--kind", "induction", "--out", "{t}/existing"], r"existing is a folder", OUT_FILES),
    ("heads-retrieval-html-under-file", ["heads", "retrieval", RET, "--html", f"{FILE}/h.html"], r"file\.txt is a file, not a folder", OUT_FILES),
    ("export-out-readonly", ["export", "{t}/c.json", "--to", "node-link", "--out", f"{RO}/d.json"], r"folder .*readonly is not writable",
     {**OUT_FILES, "c.json": circuit_file("node-link")}),
    ("export-out-under-file", ["export", "{t}/c.json", "--to", "node-link", "--out", f"{FILE}/d.json"], r"file\.txt is a file, not a folder",
     {**OUT_FILES, "c.json": circuit_file("node-link")}),
    ("export-out-is-folder", ["export", "{t}/c.json", "--to", "mib", "--out", "{t}/existing"], r"existing is a folder",
     {**OUT_FILES, "c.json": circuit_file("node-link")}),
    ("export-out-is-input", ["export", "{t}/c.json", "--to", "node-link", "--out", "{t}/c.json"], r"output .*c\.json is the input file",
     {"c.json": circuit_file("node-link")}),
    ("export-out-suffix-of-another-format", ["export", "{t}/c.json", "--to", "graphml", "--out", "{t}/d.json"],
     r"a graphml circuit is written as \.graphml, but the output .*d\.json ends in '\.json'; name it d\.graphml",
     {"c.json": circuit_file("node-link")}),
    ("export-out-unknown-suffix", ["export", "{t}/c.json", "--to", "node-link", "--out", "{t}/d.txt"], r"written as \.json.*name it d\.json",
     {"c.json": circuit_file("node-link")}),
    ("study-report-out-is-file", ["study", "report", "{t}/res", "--out", FILE], r"output .*file\.txt is a file; give a folder path",
     {**OUT_FILES, "res/": None}),
    ("study-report-out-readonly", ["study", "report", "{t}/res", "--out", f"{RO}/report"], r"folder .*readonly is not writable",
     {**OUT_FILES, "res/": None}),
    ("sae-train-out-is-file", ["sae", "train", LM, "--out", FILE, "--text", "{t}/small.txt"], r"output .*file\.txt is a file; give a folder",
     {**OUT_FILES, **TEXT}),
    ("sae-train-out-readonly", ["sae", "train", LM, "--out", f"{RO}/sae", "--text", "{t}/small.txt"], r"folder .*readonly is not writable",
     {**OUT_FILES, **TEXT}),
    ("sae-card-html-under-file", ["sae", "card", LM, SAE, "3", "--html", f"{FILE}/card.html"], r"file\.txt is a file, not a folder", OUT_FILES),
    ("sae-circuit-out-suffix", ["sae", "circuit", LM, SAE, "--out", "{t}/c.txt"], r"cannot tell a circuit format from the suffix '\.txt'", {}),
    ("zoo-export-dir-is-file", ["zoo", "export", "tiny-lm", FILE], r"file\.txt' exists and is not a folder", OUT_FILES),
    # --- builder parameters (--task-arg): checked against the builder's types and ranges before building
    ("task-arg-not-a-number", ["discover", HB, "--task-arg", "seq_len=ten", "--out", "{t}/c.json"],
     r"induction: seq_len must be a whole number, got 'ten' \(str\)", {}),
    ("task-arg-recursive-alias", ["patch", HB, "--task-arg", "seq_len=&a [*a]", "--out", "{t}/s.csv"],
     r"--task-arg 'seq_len=&a \[\*a\]'.*alias \*a lies inside the node &a it names", {}),
    ("task-arg-names-not-strings", ["patch", HB, "--task", "ioi", "--task-arg", "names=[Ann, 5]", "--out", "{t}/s.csv"],
     r"ioi: names must be a list of strings, got \['Ann', 5\]", {}),
    ("task-arg-names-one-string", ["patch", HB, "--task", "ioi", "--task-arg", "names=Ann", "--out", "{t}/s.csv"],
     r"ioi: names must be a list of strings, got 'Ann'", {}),
    ("task-arg-zero-prompts", ["patch", HB, "--task-arg", "n_prompts=0", "--out", "{t}/s.csv"], r"n_prompts is 0; ask for at least 1", {}),
    ("task-arg-negative-seq-len", ["patch", HB, "--task-arg", "seq_len=-3", "--out", "{t}/s.csv"], r"induction: seq_len must be at least 2, got -3", {}),
    ("task-arg-zero-seq-len", ["discover", HB, "--task-arg", "seq_len=0", "--out", "{t}/c.json"], r"seq_len must be at least 2, got 0", {}),
    ("task-arg-unknown-name", ["patch", HB, "--task-arg", "seq_lne=5", "--out", "{t}/s.csv"],
     r"task 'induction' takes no parameter 'seq_lne' \(did you mean 'seq_len'\?\)", {}),
    ("task-arg-float-seed", ["patch", HB, "--task-arg", "seed=1.5", "--out", "{t}/s.csv"], r"seed must be a whole number, got 1\.5", {}),
    ("task-arg-bool", ["patch", HB, "--task-arg", "prepend_bos=maybe", "--out", "{t}/s.csv"], r"prepend_bos must be true or false, got 'maybe'", {}),
    ("task-arg-token-ids-string", ["patch", HB, "--task-arg", "token_ids=abc", "--out", "{t}/s.csv"],
     r"token_ids must be a list of whole numbers, or null, got 'abc'", {}),
    ("task-arg-token-id-huge", ["patch", HB, "--task-arg", f"token_ids=[4, 5, {2**70}]", "--out", "{t}/s.csv"],
     r"token_ids \[1180591620717411303424\] are outside the tokenizer's vocabulary of 36", {}),
    ("task-arg-not-key-value", ["patch", HB, "--task-arg", "seq_len", "--out", "{t}/s.csv"], r"--task-arg 'seq_len': expected KEY=VALUE", {}),
    ("task-arg-twice", ["patch", HB, "--task-arg", "seed=1", "--task-arg", "seed=2", "--out", "{t}/s.csv"], r"'seed' is given twice", {}),
    ("task-unknown-builder", ["patch", HB, "--task", "iol", "--out", "{t}/s.csv"], r"unknown task 'iol'", {}),
    ("needle-values-not-strings", ["heads", "retrieval", RET, "--task-arg", "values=[7, 8]", "--no-progress"],
     r"needle: values must be a list of strings, got \[7, 8\]", {}),
    ("needle-arg-set-by-command", ["heads", "retrieval", RET, "--task-arg", "depths=[0.5]"], r"'depths': set by this command", {}),
    # --- numeric options: NaN / infinity and out-of-range values
    ("discover-threshold-nan", ["discover", HB, "--threshold", "nan", "--out", "{t}/c.json"], r"argument --threshold: expected a finite number, got 'nan'", {}),
    ("discover-threshold-inf", ["discover", HB, "--threshold", "inf", "--out", "{t}/c.json"], r"argument --threshold: expected a finite number, got 'inf'", {}),
    ("discover-faithfulness-above-1", ["discover", HB, "--faithfulness", "1.5", "--out", "{t}/c.json", "--no-progress"], r"faithfulness must be in \(0, 1\], got 1\.5", {}),
    ("discover-faithfulness-zero", ["discover", HB, "--faithfulness", "0", "--out", "{t}/c.json", "--no-progress"], r"faithfulness must be in \(0, 1\], got 0", {}),
    ("discover-faithfulness-nan", ["discover", HB, "--faithfulness", "nan", "--out", "{t}/c.json"], r"argument --faithfulness: expected a finite number", {}),
    ("discover-top-k-negative", ["discover", HB, "--top-k", "-1", "--out", "{t}/c.json", "--no-progress"], r"top_k needs a non-negative integer k, got -1", {}),
    ("discover-steps-zero", ["discover", HB, "--steps", "0", "--out", "{t}/c.json", "--no-progress"], r"steps must be a positive integer", {}),
    ("discover-top-k-and-threshold", ["discover", HB, "--top-k", "3", "--threshold", "0.1", "--out", "{t}/c.json"], r"not allowed with argument", {}),
    ("discover-method-arg-type", ["discover", HB, "--method-arg", "steps=ten", "--out", "{t}/c.json"], r"steps must be like its default 10, got 'ten'", {}),
    ("discover-unknown-method", ["discover", HB, "--method", "magic", "--out", "{t}/c.json"], r"argument --method: invalid choice: 'magic'", {}),
    ("patch-unknown-component", ["patch", HB, "--component", "bogus", "--out", "{t}/s.csv"], r"argument --component: invalid choice: 'bogus'", {}),
    ("patch-batch-size-zero", ["patch", HB, "--batch-size", "0", "--out", "{t}/s.csv"], r"argument --batch-size: expected a whole number >= 1, got 0", {}),
    ("patch-negative-prompts", ["patch", HB, "--n-prompts", "-2", "--out", "{t}/s.csv"], r"--n-prompts must be at least 1, got -2", {}),
    ("heads-retrieval-threshold-nan", ["heads", "retrieval", RET, "--threshold", "nan"], r"argument --threshold: expected a finite number", {}),
    ("heads-retrieval-depth-outside", ["heads", "retrieval", RET, "--depths", "1.5", "--no-progress"], r"needle: depth 1\.5 is outside \[0, 1\]", {}),
    ("heads-retrieval-length-zero", ["heads", "retrieval", RET, "--lengths", "0"], r"argument --lengths: expected a whole number >= 1, got 0", {}),
    ("heads-score-batch-size-zero", ["heads", "score", HB, "--kind", "induction", "--batch-size", "0"], r"argument --batch-size: expected a whole number >= 1", {}),
    ("heads-score-seq-len-zero", ["heads", "score", HB, "--kind", "induction", "--seq-len", "0"], r"seq_len must be a positive whole number, got 0", {}),
    ("heads-score-window-zero", ["heads", "score", HB, "--kind", "locality", "--window", "0"], r"locality needs sink >= 0 and window >= 1", {}),
    ("sae-train-lr-nan", ["sae", "train", LM, "--out", "{t}/sae", "--lr", "nan"], r"argument --lr: expected a finite number, got 'nan'", {}),
    ("sae-train-d-sae-zero", ["sae", "train", LM, "--out", "{t}/sae", "--d-sae", "0"], r"argument --d-sae: expected a whole number >= 1, got 0", {}),
    ("sae-train-steps-zero", ["sae", "train", LM, "--out", "{t}/sae", "--steps", "0", "--text", "{t}/small.txt"], r"steps \(0\) and batch_size_tokens .* must be positive", TEXT),
    ("sae-train-context-too-long", ["sae", "train", LM, "--out", "{t}/sae", "--context", "100000", "--text", "{t}/small.txt"],
     r"--context 100000 is longer than the model's n_ctx=128", TEXT),
    ("sae-report-prompts-zero", ["sae", "report", LM, SAE, "--n-prompts", "0"], r"argument --n-prompts: expected a whole number >= 1, got 0", {}),
    ("sae-report-context-too-long", ["sae", "report", LM, SAE, "--context", "100000"], r"--context 100000 is longer than the model's n_ctx=128", {}),
    # --- study specs
    ("study-spec-duplicate-key", ["study", "run", "{t}/s.yaml"], r"s\.yaml: not valid YAML at line 2.*key 'models' is given twice \(first on line 1\)",
     {"s.yaml": f"models: [{HB}]\nmodels: [{LM}]\n{SPEC_KEYS}"}),
    ("study-spec-duplicate-nested-key", ["study", "run", "{t}/s.yaml"], r"key 'every_head' is given twice",
     {"s.yaml": f"models: [{HB}]\ntasks: [induction]\nablations: [zero]\ntargets: {{every_head: true, every_head: false}}\n"}),
    ("study-spec-binary", ["study", "run", "{t}/s.yaml"], r"s\.yaml: not UTF-8 text \(byte 0xff at offset 0\)", {"s.yaml": b"\xff\xfe\x00\x01binary"}),
    ("study-spec-list", ["study", "run", "{t}/s.yaml"], r"a study spec must be a mapping of .*, got list", {"s.yaml": "- a\n- b\n"}),
    ("study-spec-empty", ["study", "run", "{t}/s.yaml"], r"a study spec must be a mapping of .*, got NoneType", {"s.yaml": ""}),
    ("study-spec-seed-beyond-int64", ["study", "run", "{t}/s.yaml"], r"seeds: 100000000000000000000000 does not fit a 64-bit integer",
     {"s.yaml": GOOD_SPEC + "seeds: [100000000000000000000000]\n"}),
    ("study-spec-builder-param-type", ["study", "run", "{t}/s.yaml"], r"tasks\[0\]\.params: induction: seq_len must be a whole number, got 'ten'",
     {"s.yaml": f"models: [{HB}]\ntasks: [{{name: induction, params: {{seq_len: ten}}}}]\nablations: [zero]\ntargets: {{every_head: true}}\n"}),
    ("study-spec-missing", ["study", "run", "{t}/missing.yaml"], r"no study spec at '.*missing\.yaml'", {}),
    ("study-spec-suffix", ["study", "run", "{t}/s.txt"], r"unknown spec format '\.txt'", {"s.txt": GOOD_SPEC}),
    ("study-report-empty-folder", ["study", "report", "{t}/res"], r"no results in '.*res' yet; run `circuitkit study run SPEC` first", {"res/": None}),
    ("study-report-missing-folder", ["study", "report", "{t}/nowhere"], r"no study results folder at", {}),
    # --- circuit files: types checked, the file and the field named
    ("circuit-nodes-not-a-list", ["export", "{t}/c.json", "--to", "node-link", "--out", "{t}/d.json"], r"c\.json: 'nodes' must be a list of objects, got str",
     {"c.json": circuit_file("node-link", lambda d: d.update(nodes="oops"))}),
    ("circuit-score-not-a-number", ["export", "{t}/c.json", "--to", "graphml", "--out", "{t}/d.graphml"],
     r"c\.json: input->a0\.h0<q> has score 'high' \(str\); a score is a number or null",
     {"c.json": circuit_file("node-link", lambda d: _first_edge(d).update(score="high"))}),
    ("circuit-in-graph-not-bool", ["export", "{t}/c.json", "--to", "gexf", "--out", "{t}/d.gexf"], r"has in_graph 'yes' \(str\); in_graph is true or false",
     {"c.json": circuit_file("node-link", lambda d: _first_edge(d).update(in_graph="yes"))}),
    ("circuit-edge-lacks-target", ["export", "{t}/c.json", "--to", "mib", "--out", "{t}/d.json"], r"c\.json: links\[0\] lacks \['target'\]",
     {"c.json": circuit_file("node-link", lambda d: _first_edge(d).pop("target"))}),
    ("circuit-n-layers-not-a-number", ["export", "{t}/c.json", "--to", "graphml", "--out", "{t}/d.graphml"], r"c\.json: graph\.n_layers must be a positive whole number, got 'two'",
     {"c.json": circuit_file("node-link", lambda d: d["graph"].update(n_layers="two"))}),
    ("mib-score-not-a-number", ["export", "{t}/m.json", "--to", "node-link", "--out", "{t}/d.json"], r"m\.json: edges\['input->a0\.h0<q>'\]\.score must be a number, got 'high'",
     {"m.json": circuit_file("mib", lambda d: _first_edge(d).update(score="high"))}),
    ("mib-n-layers-word", ["export", "{t}/m.json", "--to", "node-link", "--out", "{t}/d.json"], r"m\.json: cfg\.n_layers must be a positive whole number, got 'two'",
     {"m.json": circuit_file("mib", lambda d: d["cfg"].update(n_layers="two"))}),
    ("mib-n-layers-negative", ["export", "{t}/m.json", "--to", "node-link", "--out", "{t}/d.json"], r"m\.json: cfg\.n_layers must be a positive whole number, got -3",
     {"m.json": circuit_file("mib", lambda d: d["cfg"].update(n_layers=-3))}),
    ("mib-nodes-not-an-object", ["export", "{t}/m.json", "--to", "node-link", "--out", "{t}/d.json"], r"m\.json: 'nodes' must be an object",
     {"m.json": circuit_file("mib", lambda d: d.update(nodes="oops"))}),
    ("mib-edge-not-an-object", ["export", "{t}/m.json", "--to", "node-link", "--out", "{t}/d.json"], r"m\.json: edges\['input->a0\.h0<q>'\] must be an object",
     {"m.json": circuit_file("mib", lambda d: d["edges"].update({"input->a0.h0<q>": 3}))}),
    ("circuit-not-json", ["export", "{t}/c.json", "--to", "node-link", "--out", "{t}/d.json"], r"c\.json is not valid JSON", {"c.json": "hello {"}),
    ("circuit-empty-file", ["export", "{t}/c.json", "--to", "node-link", "--out", "{t}/d.json"], r"c\.json is not valid JSON", {"c.json": ""}),
    ("circuit-json-list", ["export", "{t}/c.json", "--to", "node-link", "--out", "{t}/d.json"], r"c\.json is no known circuit format", {"c.json": [1, 2]}),
    ("circuit-missing-file", ["export", "{t}/none.json", "--to", "node-link", "--out", "{t}/d.json"], r"no circuit file at .*none\.json", {}),
    ("circuit-graphml-garbage", ["export", "{t}/c.graphml", "--to", "node-link", "--out", "{t}/d.json"], r"c\.graphml is not valid GraphML", {"c.graphml": "<graphml>oops"}),
    # --- task files
    ("task-file-token-strings", ["patch", HB, "--task", "{t}/t.json", "--out", "{t}/s.csv"],
     r"t\.json: prompts\[0\]\.clean: expected prompt text or a non-empty list of token ids, got \['a', 'b'\]",
     {"t.json": task_file({"clean": ["a", "b"], "answers": [4]})}),
    ("task-file-answer-pos-outside", ["patch", HB, "--task", "{t}/t.json", "--out", "{t}/s.csv"], r"answer position 99 of prompt 0 is outside its 4 tokens",
     {"t.json": task_file({**OK_ENTRY, "answer_pos": 99})}),
    ("task-file-answer-pos-list-outside", ["patch", HB, "--task", "{t}/t.json", "--out", "{t}/s.csv"], r"answer position 40 of prompt 0 is outside its 4 tokens",
     {"t.json": task_file({"clean": [1, 4, 5, 6], "answers": [4, 5], "answer_pos": [1, 40]})}),
    ("task-file-token-id-huge", ["patch", HB, "--task", "{t}/t.json", "--out", "{t}/s.csv"], r"t\.json: prompts\[0\]\.clean: 1180591620717411303424 is not a token id",
     {"t.json": task_file({**OK_ENTRY, "clean": [1, 4, 5, 2**70]})}),
    ("task-file-missing-answers", ["patch", HB, "--task", "{t}/t.json", "--out", "{t}/s.csv"], r"prompts\[0\]: missing 'answers'",
     {"t.json": task_file({"clean": [1, 4, 5, 6]})}),
    ("task-file-duplicate-key-yaml", ["patch", HB, "--task", "{t}/t.yaml", "--out", "{t}/s.csv"], r"t\.yaml: not valid YAML at line 4.*key 'answers' is given twice",
     {"t.yaml": "prompts:\n  - clean: [1, 4, 5, 6]\n    answers: [6]\n    answers: [7]\n"}),
    ("task-file-duplicate-key-json", ["patch", HB, "--task", "{t}/t.json", "--out", "{t}/s.csv"], r"t\.json: key 'answers' is given twice",
     {"t.json": '{"prompts": [{"clean": [1, 4, 5, 6], "answers": [4], "answers": [5]}]}'}),
    ("task-file-binary", ["patch", HB, "--task", "{t}/t.yaml", "--out", "{t}/s.csv"], r"t\.yaml: not UTF-8 text", {"t.yaml": b"\xff\xfe\x00garbage"}),
    ("task-file-metric-type", ["patch", HB, "--task", "{t}/t.json", "--out", "{t}/s.csv"], r"t\.json: metric must be a metric name .*, got 5 \(int\)",
     {"t.json": task_file(OK_ENTRY, metric=5)}),
    ("task-file-no-suffix", ["patch", HB, "--task", "{t}/t.txt", "--out", "{t}/s.csv"], r"is a file without a task-file suffix", {"t.txt": "x"}),
    ("task-file-missing", ["patch", HB, "--task", "{t}/none.json", "--out", "{t}/s.csv"], r"no task file at", {}),
    ("task-file-longer-than-n-ctx", ["patch", HB, "--task", "{t}/t.json", "--out", "{t}/s.csv"], r"prompts of 100 tokens but model 'induction-handbuilt' has n_ctx=64",
     {"t.json": task_file({"clean": [4] * 100, "answers": [4]})}),
    # --- SAEs
    ("sae-card-feature-outside", ["sae", "card", LM, SAE, "99999", "--text", "{t}/small.txt"], r"feature 99999 is outside this SAE's 512 latents", TEXT),
    ("sae-card-feature-negative", ["sae", "card", LM, SAE, "-1", "--text", "{t}/small.txt"], r"feature -1 is outside this SAE's 512 latents", TEXT),
    ("sae-dir-missing", ["sae", "report", LM, "{t}/no-sae"], r"no SAE directory at '.*no-sae'", {}),
    ("sae-dir-without-cfg", ["sae", "report", LM, "{t}/existing"], r"'.*existing' has no cfg\.json", OUT_FILES),
    ("sae-other-width", ["sae", "report", HB, SAE, "--text", "{t}/small.txt"], r"the SAE has d_in=128 but hook .* carries 125-wide activations", TEXT),
    ("sae-text-binary", ["sae", "report", LM, SAE, "--text", "{t}/b.txt"], r"b\.txt' is a binary file, not text", {"b.txt": b"\x00\x01\x02"}),
    # --- names that are not there
    ("zoo-show-unknown", ["zoo", "show", "no-such-model"], r"no zoo model named 'no-such-model'; available: ", {}),
    ("zoo-export-unknown", ["zoo", "export", "no-such-model", "{t}/hf"], r"no zoo model named 'no-such-model'", {}),
    ("zoo-export-handbuilt", ["zoo", "export", "induction-handbuilt", "{t}/hf"], r"cannot export 'induction-handbuilt' as a Hugging Face folder", {}),
    ("info-missing-folder", ["info", "./missing-folder"], r"no model directory at '\./missing-folder'", {}),
    ("discover-unknown-zoo-model", ["discover", "zoo:nope", "--out", "{t}/c.json"], r"no zoo model named 'nope'", {}),
    ("heads-retrieval-tokenizer-cannot", ["heads", "retrieval", HB, "--no-progress"], r"needle: none of the 12 prompts could be built with this tokenizer .*; use a model whose tokenizer covers", {}),
    ("heads-retrieval-haystack-binary", ["heads", "retrieval", RET, "--haystack", "{t}/h.txt"], r"h\.txt' is a binary file, not text", {"h.txt": b"\x00abc"}),
    ("unknown-command", ["frobnicate"], r"argument COMMAND: invalid choice: 'frobnicate'", {}),
]


def _prepare(tmp_path: Path, files: dict) -> None:
    for name, content in files.items():
        path = tmp_path / name
        if name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        content = content() if callable(content) else content
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content)
        else:
            path.write_text(json.dumps(content))


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _one_error_line(err: str, code) -> str:
    """The error line: the whole stderr is one ``circuitkit ...: error: ...`` line, or argparse's
    usage lines followed by one such line (exit 2)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and errors[0] == lines[-1], f"expected one error line last:\n{err}"
    assert lines[-1].startswith("circuitkit") and ": error: " in lines[-1], err
    if len(lines) > 1:  # argparse: usage (maybe wrapped), then the error
        assert lines[0].startswith("usage: circuitkit") and code == 2, err
    return lines[-1]


def test_the_list_is_long_and_distinct():
    ids = [case[0] for case in CASES]
    assert len(ids) >= 60 and len(set(ids)) == len(ids)


@pytest.mark.parametrize("name, argv, pattern, files", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_leaves_nothing(name, argv, pattern, files, tmp_path, monkeypatch, capsys):
    _prepare(tmp_path, files)
    readonly = tmp_path / "readonly"
    if readonly.is_dir():
        readonly.chmod(0o555)
        if os.geteuid() == 0:  # root writes anywhere: tell the check what another user would see
            real_access = os.access
            monkeypatch.setattr(os, "access", lambda p, mode, **kw: not (mode & os.W_OK and Path(p) == readonly)
                                and real_access(p, mode, **kw))
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    argv = [a.replace("{t}", str(tmp_path)) for a in argv]
    try:
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code
    finally:
        if readonly.is_dir():
            readonly.chmod(0o755)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code not in (0, None), f"exit status {code}"
    line = _one_error_line(err, code)
    assert re.search(pattern, line), f"{line!r} does not match {pattern!r}"
    left = _tree(tmp_path) - before
    assert not left, f"left behind: {sorted(left)}"
