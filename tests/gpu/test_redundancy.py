"""cram redundancy: the block-by-block forward, the ridge algebra, the corpus split and the
planted-head end-to-end check on tiny randomly initialised GPT-2 models saved to disk."""

from __future__ import annotations

import json
import math
import random
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

transformers = pytest.importorskip("transformers")

from cramkit.cli.main import cli  # noqa: E402
from cramkit.errors import CramError  # noqa: E402
from cramkit.gpu.redundancy.config import RedundancyConfig  # noqa: E402
from cramkit.gpu.redundancy.controls import binned_auc  # noqa: E402
from cramkit.gpu.redundancy.corpus import read_documents, split_corpus  # noqa: E402
from cramkit.gpu.redundancy.engine import run  # noqa: E402
from cramkit.gpu.redundancy.planted import save_planted_gpt2  # noqa: E402
from cramkit.gpu.redundancy.predictors import Moments, fit_ridge, lagged  # noqa: E402

WORDS = (
    "the a of to and in that is was he for it with as his on be at by this had not are but from or "
    "have an they which one you were her all she there would their we him been has when who will more"
).split()


def _corpus(path, n_docs=18, seed=0):
    rnd = random.Random(seed)
    docs = [
        " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(40, 90))) + "." for _ in range(n_docs)
    ]
    path.write_text("\n<|endoftext|>\n".join(docs), encoding="utf-8")
    return path


def _tiny_gpt2(path, *, planted_heads=(), seed=0, inverse_layer_scale=False):
    """The planted-head model of gpu.redundancy.planted (random GPT-2 when no head is planted)."""
    return save_planted_gpt2(
        path, tuple(planted_heads), seed=seed, inverse_layer_scale=inverse_layer_scale
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _corpus(tmp_path_factory.mktemp("corpus") / "docs.txt")


def _invoke(args):
    res = CliRunner().invoke(cli, ["redundancy", *args])
    return res


FAST = ["--tokenizer", "bytes", "--window", "96", "--min-pos", "4", "--max-tokens", "all", "--quiet",
        "--bootstrap", "200", "--mlp-epochs", "3"]  # fmt: skip


# ------------------------------------------------------------------------------------ engine


@pytest.mark.parametrize("inverse", [False, True])
def test_block_forward_matches_hf_model(tmp_path, inverse):
    model = _tiny_gpt2(tmp_path / "m", seed=1, inverse_layer_scale=inverse).eval()
    from cramkit.gpu.redundancy.adapters import HFGPT2Adapter

    ad = HFGPT2Adapter(model)
    tok = torch.randint(0, 256, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(tok).logits
    ref = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 256), tok[:, 1:].reshape(-1), reduction="none"
    )
    P = run(ad, tok, capture=True)
    assert torch.allclose(P.nll[:, :-1].reshape(-1), ref, atol=1e-5)
    # o is the projection of the per-head outputs; patching o by itself changes nothing
    P2 = run(ad, tok, patch=lambda layer, x, o: o.clone())
    assert torch.equal(P2.nll, P.nll)
    # patching layer 0 with zeros does change the NLL (the patch is applied)
    P3 = run(ad, tok, patch=lambda layer, x, o: torch.zeros_like(o) if layer == 0 else None)
    assert not torch.allclose(P3.nll, P.nll)


def test_planted_head_is_self_attending_and_linear(tmp_path):
    model = _tiny_gpt2(tmp_path / "m", planted_heads=(0,)).eval()
    from cramkit.gpu.redundancy.adapters import HFGPT2Adapter

    ad = HFGPT2Adapter(model)
    tok = torch.randint(0, 256, (2, 60), generator=torch.Generator().manual_seed(3))
    P = run(ad, tok, capture=True)
    x, z = P.xs[0], P.zs[0]
    _, _, v = ad.qkv(0, x)  # (B, H, T, hd)
    assert torch.allclose(z[:, :, 0], v[:, 0], atol=1e-4)  # head 0 returns its own value
    assert not torch.allclose(z[:, :, 1], v[:, 1], atol=1e-2)  # head 1 mixes the prefix


# ------------------------------------------------------------------------------------- ridge


def test_ridge_recovers_linear_map_and_val_error_formula():
    g = torch.Generator().manual_seed(0)
    D, dz, n = 12, 8, 600
    A = torch.randn(D, dz, generator=g, dtype=torch.float64)
    w_o = torch.randn(dz, 5, generator=g, dtype=torch.float64)
    M = w_o @ w_o.T

    def data(m, noise):
        x = torch.randn(m, D, generator=g, dtype=torch.float64) + 0.5
        return x, x @ A + 1.0 + noise * torch.randn(m, dz, generator=g, dtype=torch.float64)

    fit, val = Moments(D), Moments(D)
    xf, zf = data(n, 0.3)
    xv, zv = data(300, 0.3)
    fit.add(xf, {"z": zf})
    val.add(xv, {"z": zv}, second=True)
    r = fit_ridge(fit, val, "z", M, name="p1")
    # closed form at the chosen lambda, done the slow way
    xm, zm = xf.mean(0), zf.mean(0)
    a = xf - xm
    B = torch.linalg.solve(a.T @ a + r.lam * torch.eye(D, dtype=torch.float64), a.T @ (zf - zm))
    assert torch.allclose(r.B.double(), B, atol=1e-4)
    pred = (xv - xm) @ B + zm
    err = float((((zv - pred) @ w_o) ** 2).sum())
    base = float((((zv - zm) @ w_o) ** 2).sum())
    assert math.isclose(r.val_rel_err, err / base, rel_tol=1e-6)
    assert r.val_rel_err < 0.1  # the map is recovered


def test_lagged_features():
    x = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    y = lagged(x, 2)
    assert y.shape == (2, 4, 9)
    assert torch.equal(y[:, :, :3], x)
    assert torch.equal(y[:, 1:, 3:6], x[:, :-1])
    assert torch.equal(y[:, 2:, 6:], x[:, :-2])
    assert torch.all(y[:, 0, 3:] == 0) and torch.all(y[:, 1, 6:] == 0)


def test_binned_auc_matches_rank_auc():
    rng = np.random.default_rng(0)
    lab = rng.random(2000) < 0.3
    score = np.clip(rng.normal(0.5 + 0.2 * lab, 0.15), 0, 0.9999)
    bins = (score * 200).astype(int)
    pos = np.bincount(bins[lab], minlength=200)
    neg = np.bincount(bins[~lab], minlength=200)
    from scipy.stats import mannwhitneyu

    exact = mannwhitneyu(score[lab], score[~lab]).statistic / (lab.sum() * (~lab).sum())
    assert abs(binned_auc(pos, neg) - exact) < 0.01
    assert binned_auc(pos, np.zeros(200)) is None


# ------------------------------------------------------------------------------------ corpus


def test_corpus_split_is_by_document_and_budgeted(corpus):
    docs = read_documents(corpus)
    assert len(docs) == 18
    sp = split_corpus(
        docs, lambda s: list(s.encode()), bos_id=None, window=50, max_tokens=700, seed=1
    )
    ids = [set(sp[k].docs) for k in ("fit", "val", "test")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert all(len(w.tokens) <= 50 for s in sp.values() for w in s.windows)
    # round-robin budget: TEST spans several documents although the budget is small
    assert len(sp["test"].docs) >= 3
    assert sp["fit"].n_tokens < 700 * 4 / 7 + 50
    # long windows are shortened so that a small budget still reaches several documents
    big = split_corpus(
        docs, lambda s: list(s.encode()), bos_id=None, window=1024, max_tokens=700, seed=1
    )
    assert len(big["test"].docs) >= 3  # one 1024-byte window would have used up the 200-byte budget
    assert (
        max(len(w.tokens) for w in big["test"].windows) <= 200 // min(8, len(big["test"].docs)) + 1
    )


def test_corpus_blank_line_separators_and_errors(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("one doc\nstill one\n\n\nsecond\n\n\n\nthird\n\nthird still", encoding="utf-8")
    assert read_documents(f) == ["one doc\nstill one", "second", "third\n\nthird still"]
    f.write_text("only one document here", encoding="utf-8")
    with pytest.raises(CramError, match="at least 3"):
        read_documents(f)
    f.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(CramError, match="UTF-8"):
        read_documents(f)
    with pytest.raises(CramError, match="does not exist"):
        read_documents(tmp_path / "nope.txt")


def test_bundled_corpus_is_usable():
    docs = read_documents(None)
    assert len(docs) >= 20
    assert sum(len(d) for d in docs) > 20_000


def test_config_validation():
    with pytest.raises(CramError, match="unknown predictor"):
        RedundancyConfig(predictors=("p1", "p9"))
    with pytest.raises(CramError, match="patch predictor"):
        RedundancyConfig(predictors=("p0", "p2"), patch_predictor="p1")
    assert RedundancyConfig(predictors=("p0", "p2")).patch_predictor == "p2"
    assert RedundancyConfig().resolve(32).predictors == ("p0", "p1", "plocal", "p2")
    assert RedundancyConfig(local_window=5).resolve(512).predictors == ("p0", "p1", "p2")
    assert RedundancyConfig().resolve(768).predictors == ("p0", "p1")  # GPT-2 small: both opt-in
    assert RedundancyConfig().resolve(768).patch_predictor == "p1"
    assert RedundancyConfig(predictors=("p0", "plocal")).resolve(768).predictors == ("p0", "plocal")
    with pytest.raises(CramError, match="budget"):
        RedundancyConfig(budget=float("nan"))
    with pytest.raises(CramError, match="unknown redundancy option"):
        RedundancyConfig.from_dict({"windw": 3})


# ------------------------------------------------------------------------------ end to end


def test_planted_head_detected_and_shuffled_control_not(tmp_path, corpus):
    _tiny_gpt2(tmp_path / "m", planted_heads=(0,))
    res = _invoke([str(tmp_path / "m"), "--text", str(corpus), *FAST, "--predictors", "p0,p1", "--no-gate",
                   "--no-per-layer", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    lay0 = r["layers"][0]["predictors"]
    assert lay0["p1"]["heads"]["0.05"][0] > 0.95  # the planted head is redundant
    assert lay0["c2_shuffled"]["heads"]["0.05"][0] < 0.05  # the shuffled control is not
    assert lay0["p0"]["heads"]["0.05"][0] < 0.05  # nor is it a constant head
    assert lay0["p1"]["heads"]["0.05"][1] < 0.5  # the other head is not linear in x_t
    assert r["overall"]["c2_shuffled"]["pi"]["0.05"] < 0.05
    for key in ("headline", "layers", "controls"):
        assert key in r
    assert set(r["headline"]) >= {"fraction", "ci", "dnll"}


def test_planted_layer_gives_budgeted_headline(tmp_path, corpus):
    """Both heads of layer 0 planted: layer 0 can be replaced everywhere at no NLL cost, so the
    headline is about half of all layer-positions (2 layers), and the gate learns it too."""
    _tiny_gpt2(tmp_path / "m", planted_heads=(0, 1))
    plot = tmp_path / "r.png"
    res = _invoke([str(tmp_path / "m"), "--text", str(corpus), *FAST, "--per-layer", "--predictors", "p0,p1,plocal",
                   "--json", "--plot", str(plot)])  # fmt: skip
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    h = r["headline"]
    assert h["feasible"] and h["dnll"] <= 0.01
    assert 0.45 < h["fraction"] <= 0.75
    assert h["ci"][0] <= h["fraction"] <= h["ci"][1]
    assert h["capped"] is (h["tau"] == max(r["config"]["sweep_taus"]))
    ev = r["controls"]["c5_patching"]["everywhere"]
    assert ev["p1_everywhere"]["fraction"] == 1.0
    # mean-ablating both layers costs more than replacing them by the ridge prediction
    assert ev["p0_everywhere"]["dnll"] > ev["p1_everywhere"]["dnll"]
    per = r["controls"]["c5_patching"]["per_layer"]
    assert per[0]["fraction"] > 0.9 and abs(per[0]["dnll"]) < 1e-3
    assert r["controls"]["c6_gate"]["headline"]["fraction"] > 0.4
    assert r["layers"][0]["predictors"]["plocal"]["pi"]["0.05"] > 0.9
    assert plot.stat().st_size > 1000


def test_text_report_and_defaults_run(tmp_path, corpus):
    _tiny_gpt2(tmp_path / "m", seed=2)
    res = _invoke([str(tmp_path / "m"), "--text", str(corpus), *FAST, "--predictors", "p1,p2", "--no-gate",
                   "--taus", "0.1,0.5"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "HEADLINE (C5)" in res.output and "P2 MLP" in res.output and "tau=0.5" in res.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["/nonexistent/gpt2"], "save_pretrained"),
        (["{tmp}"], "no config.json"),
        (["{model}", "--predictors", "p1,p7"], "unknown predictor"),
        (["{model}", "--budget", "nan"], "budget"),
        (["{model}", "--text", "{tmp}/missing.txt", "--tokenizer", "bytes"], "does not exist"),
        (["{model}"], "no tokenizer files"),
        (["{model}", "--layers", "5", "--tokenizer", "bytes"], "layers must be"),
        (["{model}", "--window", "500", "--tokenizer", "bytes"], "exceeds the model's context"),
        ([], "name a model"),
    ],
)
def test_bad_input_is_one_line(tmp_path, corpus, args, needle):
    _tiny_gpt2(tmp_path / "m")
    args = [a.replace("{tmp}", str(tmp_path)).replace("{model}", str(tmp_path / "m")) for a in args]
    if "--text" not in args and args and args[0] != "/nonexistent/gpt2":
        args += ["--text", str(corpus)]
    res = _invoke([*args, "--quiet"])
    assert res.exit_code == 2, res.output
    assert needle in res.output
    assert "Traceback" not in res.output


def test_missing_transformers_names_the_extra(tmp_path, monkeypatch):
    _tiny_gpt2(tmp_path / "m")
    monkeypatch.setitem(sys.modules, "transformers", None)
    res = _invoke([str(tmp_path / "m"), "--quiet"])
    assert res.exit_code == 2
    assert "pip install 'cram[gpt2]'" in res.output


def test_tokenizer_from_the_model_directory(tmp_path, corpus):
    """The default --tokenizer auto reads the tokenizer saved beside the weights (a tiny byte-level
    BPE here, as GPT-2's is) and starts each window with its BOS token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    docs = read_documents(corpus)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(docs, trainer)
    tok = GPT2TokenizerFast(
        tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2)
    )
    model.save_pretrained(str(tmp_path / "m"))
    tok.save_pretrained(str(tmp_path / "m"))
    from cramkit.gpu.redundancy import load_model

    lm = load_model(tmp_path / "m")
    assert lm.bos_id == tok.convert_tokens_to_ids("<|endoftext|>")
    assert lm.encode("the one") == tok("the one")["input_ids"]
    sp = split_corpus(docs, lm.encode, bos_id=lm.bos_id, window=64, max_tokens=None)
    assert all(w.tokens[0] == lm.bos_id for w in sp["test"].windows)
    res = _invoke([str(tmp_path / "m"), "--text", str(corpus), "--min-pos", "4", "--max-tokens", "all", "--quiet",
                   "--predictors", "p0,p1", "--no-gate", "--no-per-layer", "--bootstrap", "0", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert r["model"]["tokenizer"] == str(tmp_path / "m") and r["data"]["window"] == 64
    assert r["headline"]["ci"] is None  # --bootstrap 0


# ------------------------------------------------------------------ NaN models and --plot paths


def _poisoned_gpt2(path, how: str):
    """A planted GPT-2 whose MLP holds NaN weights (``nan``), or with finite weights so large
    that the forward overflows to NaN/inf (``overflow``)."""
    model = _tiny_gpt2(path, planted_heads=(0,))
    with torch.no_grad():
        if how == "nan":
            model.transformer.h[1].mlp.c_fc.weight[0, 0] = float("nan")
        else:
            model.transformer.h[0].mlp.c_proj.weight.fill_(3e38)
    model.save_pretrained(str(path))


@pytest.mark.parametrize(("how", "needle"), [("nan", "has NaN or inf weights"), ("overflow", "produces NaN or inf")])
@pytest.mark.parametrize("as_json", [False, True])
def test_model_with_nan_is_one_line_error_in_every_mode(tmp_path, corpus, how, needle, as_json):
    _poisoned_gpt2(tmp_path / "m", how)
    res = _invoke([str(tmp_path / "m"), "--text", str(corpus), *FAST, "--predictors", "p0,p1", "--no-gate",
                   *(["--json"] if as_json else [])])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert needle in res.output and str(tmp_path / "m") in res.output
    assert "Traceback" not in res.output and "null" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_plot_to_a_folder_is_refused_before_measuring(tmp_path, corpus):
    _tiny_gpt2(tmp_path / "m")
    (tmp_path / "existing").mkdir()
    for target in (str(tmp_path / "newdir") + "/", str(tmp_path / "existing"), str(tmp_path / "r.txt")):
        res = _invoke([str(tmp_path / "m"), "--text", str(corpus), *FAST, "--plot", target])
        assert res.exit_code == 2, res.output
        assert "--plot" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "newdir").exists()
    assert list((tmp_path / "existing").iterdir()) == []


def test_library_call_returns_a_result(tmp_path, corpus):
    """The command contract: run(RedundancyRun) -> a Result whose JSON, text and plot come from
    the library, with progress reported through the one progress type."""
    from cramkit.gpu.redundancy import RedundancyConfig as Options
    from cramkit.gpu.redundancy import RedundancyResult, RedundancyRun
    from cramkit.gpu.redundancy import run as run_redundancy

    _tiny_gpt2(tmp_path / "m", planted_heads=(0,))
    seen = []
    opts = Options(window=96, min_pos=4, max_tokens=1400, predictors=("p0", "p1"), gate=False, bootstrap=0,
                   context_swap=False)  # fmt: skip
    r = run_redundancy(RedundancyRun(str(tmp_path / "m"), str(corpus), "bytes", opts),
                       lambda stage, done, total: seen.append((stage, done, total)))  # fmt: skip
    assert isinstance(r, RedundancyResult) and r.ok
    assert {"FIT", "VAL", "TEST", "fit predictors", "patch (C5)"} <= {s for s, _, _ in seen}
    assert all(0 <= done <= total for _, done, total in seen)
    j = r.to_json()
    assert list(j) == ["model", "data", "config", "layers_measured", "overall", "layers", "controls", "cdf",
                       "headline", "timing_s", "stage_s"]  # fmt: skip
    assert json.loads(json.dumps(j, allow_nan=False)) == j
    assert r.report().startswith("cram redundancy: ") and "HEADLINE (C5)" in r.report()
    r.plot(tmp_path / "r.svg")
    assert (tmp_path / "r.svg").read_text().lstrip().startswith("<?xml")
