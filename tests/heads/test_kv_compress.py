"""The accuracy vs kept-cache comparison on the hand-built needle model: its top retrieval group
(a1.h0, by each detector) keeps every needle at a quarter of the cache under RazorAttention and
under HeadKV budgets, while random single heads lose the needles outside the window; and the
``heads kv-compress`` command writes the table and the curve."""

import pandas as pd
import pytest

import circuitkit as ck
from circuitkit.cli import main
from circuitkit.errors import InputError
from circuitkit.heads.compress import kv_compress_curve

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LENGTHS, DEPTHS = (128,), (0.0, 0.5)


@pytest.fixture(scope="module")
def handbuilt():
    model = ck.load_model("zoo:retrieval-handbuilt")
    params = {k: v for k, v in ck.zoo_card("retrieval-handbuilt").task["params"].items()
              if k in ("values", "haystack", "needle_template", "question")}
    return model, params


@pytest.mark.parametrize(("policy", "detector"), [("razor", "qrhead"), ("headkv", "locos")])
def test_detected_heads_beat_random_heads_at_the_same_cache(handbuilt, policy, detector):
    model, params = handbuilt
    curve = kv_compress_curve(model, policy, detector, ks=[0, 1], n_random=3, seed=1, window=16, budget=4,
                              context_lengths=LENGTHS, depths=DEPTHS, **params)
    assert len(curve) == 2 * 4 and set(curve.seed) == {-1, 1, 2, 3}
    one = curve[curve.k == 1]
    top = one[one.selection == "detector"].iloc[0]
    assert top.heads == "a1.h0" and top.accuracy == 1.0 and top.kv_kept < 0.3
    drawn = one[one.selection == "random"]
    assert (drawn.kv_kept == top.kv_kept).all()  # same cache size
    assert (drawn[drawn.heads != "a1.h0"].accuracy == 0.0).all()  # the needle beyond the window is lost
    assert (curve[curve.k == 0].accuracy == 0.0).all()
    with pytest.raises(InputError, match="ks must be whole numbers"):
        kv_compress_curve(model, policy, detector, ks=[9], **params)


def test_cli_kv_compress_writes_table_and_curve(tmp_path, capsys):
    out, html = tmp_path / "curve.parquet", tmp_path / "curve.html"
    code = main(["heads", "kv-compress", "zoo:retrieval-handbuilt", "--policy", "razor", "--detector", "qrhead",
                 "--ks", "1", "--n-random", "2", "--lengths", "128", "--depths", "0", "--compensate",
                 "--out", str(out), "--html", str(html), "--no-progress"])
    assert code == 0
    table = pd.read_parquet(out)
    assert list(table.selection) == ["detector", "random", "random"] and table.accuracy.iloc[0] == 1.0
    assert "plotly" in html.read_text().lower()
    assert "top 1 by qrhead: a1.h0" in capsys.readouterr().out
