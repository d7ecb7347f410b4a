"""Anchors: vote on hand-made rankings, the capped-simplex projection against brute force,
bilevel on a toy problem with a known answer, Gram closed form vs unrolled, the sketch, the
fit split and the CLI."""

from __future__ import annotations

import copy
import itertools
import json

import pandas as pd
import pytest
import torch

from unlearnscope.anchors import (
    AnchorSets,
    BilevelSettings,
    bilevel_anchors,
    project_capped_simplex,
    read_anchors,
    split_fit,
    vote_anchor_sets,
    vote_anchors,
    write_anchors,
)
from unlearnscope.anchors.bilevel import (
    gram_forgetting,
    model_loss_functions,
    optimize_weights,
    outer_objective,
    round_disjoint,
    unrolled_forgetting,
)
from unlearnscope.anchors.gradient_sketch import GradientSketch, gradient_features, retain_feature
from unlearnscope.anchors.vote import efficacy_ranks
from unlearnscope.cli import main
from unlearnscope.data import load_samples
from unlearnscope.data.tokenize import encode_sample, encode_samples, pad_id
from unlearnscope.errors import DataError, NonFiniteError
from unlearnscope.models import load_model
from unlearnscope.runs import write_parquet


def table_from_order(order: str, delta: dict[str, float] | None = None) -> pd.DataFrame:
    """Outcome table whose efficacy ranks the samples in `order` (best first)."""
    return pd.DataFrame({"sample_id": list(order),
                         "efficacy": [1.0 - r / 10 for r in range(len(order))],
                         "delta_loss": [(delta or {}).get(s, 0.0) for s in order]})


# ---- vote -------------------------------------------------------------------------------


def test_vote_three_methods_fill_up_by_mean_rank():
    # ranks: A a0 b1 c2 d3 e4 f5 | B a0 c1 b2 e3 f4 d5 | C d0 a1 e2 f3 c4 b5
    # top-2 votes: a 3, b/c/d 1 -> easy candidate a only; bottom-2: f (A, B) -> hard f only.
    # mean ranks: a 1/3, c 7/3, b 8/3, d 8/3, e 3, f 4 -> easy fills c, hard fills e.
    outcomes = {"A": table_from_order("abcdef"), "B": table_from_order("acbefd"),
                "C": table_from_order("daefcb")}
    result = vote_anchors(outcomes, 2)
    assert result.easy == ["a", "c"]
    assert result.hard == ["f", "e"]
    assert result.mean_rank["c"] == pytest.approx(7 / 3)
    assert result.per_method["B"] == {"easy": ["a", "c"], "hard": ["d", "f"]}
    assert result.per_method["C"] == {"easy": ["d", "a"], "hard": ["b", "c"]}


def test_vote_cuts_candidates_beyond_k_by_mean_rank_then_id():
    # top-2: A {a,b}, B {b,c}, C {c,a}: a, b, c each have 2 votes; mean ranks a 1, b 4/3, c 1
    outcomes = {"A": table_from_order("abcdef"), "B": table_from_order("bcaefd"),
                "C": table_from_order("cadbfe")}
    result = vote_anchors(outcomes, 2)
    assert result.easy == ["a", "c"]
    # bottom-2: A {e,f}, B {f,d}, C {f,e}: f 3 votes, e 2 -> f (13/3) then e (4)
    assert result.hard == ["f", "e"]


def test_vote_sample_in_both_sets_goes_by_mean_rank():
    # Two methods need one vote. x: A rank 5 (bottom 3), B rank 0 (top 3): both; mean 2.5 < 3
    # -> easy side. b: A 1, B 4: both, mean 2.5 -> easy side. Easy candidates a c b d x cut to
    # a, c, b (mean 1.5, 1.5, 2.5, id order); hard: f, e, then filled by mean rank skipping b
    # (easy): d. Were b a hard candidate, hard would be f, e, b.
    outcomes = {"A": table_from_order("abcdexf"), "B": table_from_order("xcdabfe")}
    result = vote_anchors(outcomes, 3)
    assert result.easy == ["a", "c", "b"]
    assert result.hard == ["f", "e", "d"]
    assert not set(result.easy) & set(result.hard)


def test_vote_ties_break_by_delta_loss_then_id():
    table = pd.DataFrame({"sample_id": ["q", "p", "r", "s"], "efficacy": [1.0, 1.0, 1.0, 0.2],
                          "delta_loss": [3.0, 3.0, 5.0, 0.1]})
    assert efficacy_ranks(table, ["p", "q", "r", "s"]).tolist() == [1, 2, 0, 3]
    no_delta = table.drop(columns="delta_loss")
    assert efficacy_ranks(no_delta, ["p", "q", "r", "s"]).tolist() == [0, 1, 2, 3]


def test_vote_input_errors():
    good = table_from_order("abcd")
    with pytest.raises(DataError, match="k=3"):
        vote_anchors({"A": good}, 3)
    with pytest.raises(DataError, match="no outcome for 1 sample"):
        vote_anchors({"A": good, "B": table_from_order("abc")}, 1)
    bad = good.assign(efficacy=[0.1, float("nan"), 0.2, 0.3])
    with pytest.raises(NonFiniteError, match="outcomes of 'B'"):
        vote_anchors({"A": good, "B": bad}, 1)


# ---- split and file --------------------------------------------------------------------


def test_split_fit_is_disjoint_deterministic_and_order_free():
    ids = [f"s{i}" for i in range(11)]
    fit, held = split_fit(ids, 0.5, seed=3)
    assert len(fit) == 6 and len(held) == 5
    assert set(fit) | set(held) == set(ids) and not set(fit) & set(held)
    assert fit == [i for i in ids if i in set(fit)]  # original order kept
    assert split_fit(ids, 0.5, seed=3) == (fit, held)
    shuffled_fit, _ = split_fit(ids[::-1], 0.5, seed=3)
    assert set(shuffled_fit) == set(fit)
    assert split_fit(ids, 0.5, seed=4)[0] != fit
    assert split_fit(ids, 1.0) == (ids, [])
    with pytest.raises(DataError, match="fit fraction"):
        split_fit(ids, 0.0)


def test_vote_anchor_sets_vote_on_the_fit_part_only():
    order = "abcdefghij"  # every method: a most forgotten, j least
    tables = {m: table_from_order(order) for m in ("npo", "rmu", "simnpo")}
    ids = list("jihgfedcba")  # the sets do not depend on the given order
    everything = vote_anchor_sets(tables, 2, ids, fit_fraction=1.0, seed=0,
                                  options={"fit_fraction": 1.0},
                                  diagnostics={"methods": ["npo", "rmu", "simnpo"]})
    assert (everything.method, everything.k) == ("vote", 2)
    assert (everything.easy, everything.hard) == (["a", "b"], ["j", "i"])
    assert (everything.fit_ids, everything.held_out_ids) == (ids, [])
    assert everything.options == {"fit_fraction": 1.0}
    assert list(everything.diagnostics) == ["mean_rank", "methods"]
    ranks = everything.diagnostics["mean_rank"]
    assert (ranks["a"], ranks["j"]) == (0, 9)
    assert everything.per_method["rmu"] == {"easy": ["a", "b"], "hard": ["j", "i"]}
    half = vote_anchor_sets(tables, 2, ids, fit_fraction=0.5, seed=1)
    assert len(half.fit_ids) == 5 and sorted(half.fit_ids + half.held_out_ids) == sorted(ids)
    fit = sorted(half.fit_ids)  # in `order`, the fit samples' own ranking
    assert (half.easy, half.hard) == (fit[:2], fit[::-1][:2])
    assert half.options == {} and list(half.diagnostics) == ["mean_rank"]
    assert sorted(half.diagnostics["mean_rank"]) == fit


def test_anchor_file_round_trip(tmp_path):
    sets = AnchorSets("vote", 1, ["a"], ["b"], ["a", "b", "c"], ["d"],
                      per_method={"npo": {"easy": ["a"], "hard": ["c"]}}, options={"k": 1},
                      diagnostics={"mean_rank": {"a": 0.0}})
    write_anchors(tmp_path, sets)
    back = read_anchors(tmp_path)
    assert back == sets
    assert back.sets_for("npo") == {"npo": {"easy": ["a"], "hard": ["c"]}}
    assert back.sets_for("mean") == sets.per_method
    assert back.sets_for(None) == {"combined": {"easy": ["a"], "hard": ["b"]}}
    with pytest.raises(DataError, match="no lists for method 'rmu'"):
        back.sets_for("rmu")
    with pytest.raises(DataError, match="overlap"):
        AnchorSets("vote", 1, ["a"], ["a"], ["a"], [])
    (tmp_path / "bad.json").write_text(json.dumps({"method": "vote"}))
    with pytest.raises(DataError, match="field 'k'"):
        read_anchors(tmp_path / "bad.json")


# ---- projection ------------------------------------------------------------------------


def brute_force_projection(v: torch.Tensor, k: float) -> torch.Tensor:
    """Minimum-distance point among the candidates of every assignment of each coordinate to
    0, 1 or free (free coordinates share one shift tau fixed by the sum)."""
    best, best_distance = None, float("inf")
    for labels in itertools.product((0, 1, 2), repeat=len(v)):
        labels = torch.tensor(labels)
        free = labels == 2
        ones = int((labels == 1).sum())
        if not bool(free.any()):
            if ones != k:
                continue
            w = labels.double()
        else:
            tau = (v[free].sum() - (k - ones)) / free.sum()
            w = torch.where(free, v - tau, labels.double())
            if bool(((w[free] < 0) | (w[free] > 1)).any()):
                continue
        distance = float(((w - v) ** 2).sum())
        if distance < best_distance:
            best, best_distance = w, distance
    return best


@pytest.mark.parametrize("k", [1.0, 2.5, 4.0])
def test_projection_matches_brute_force(k):
    generator = torch.Generator().manual_seed(int(k * 10))
    for _ in range(4):
        v = torch.randn(6, generator=generator, dtype=torch.float64) * 1.5
        w = project_capped_simplex(v, k)
        assert w.sum() == pytest.approx(k, abs=1e-12)
        assert bool((w >= 0).all() and (w <= 1).all())
        torch.testing.assert_close(w, brute_force_projection(v, k), atol=1e-10, rtol=0)


# ---- bilevel on a toy with a known answer ---------------------------------------------

# Linear least squares at theta_0 = 0: loss_j = (x_j . theta - y_j)^2 / 2, g_j = -y_j x_j.
# s0, s1 duplicate a large gradient (3 e0); s2..s5 have small, orthogonal gradients; s6 and s7
# are fit exactly (zero gradient). One step on the weighted forget loss raises loss_j by
# eta g_j . sum_i w_i g_i (+ eta^2 terms): the pair {s0, s1} forgets most (|3 e0 + 3 e0|^2),
# {s6, s7} forgets nothing, and any other pair forgets something.
TOY_X = torch.eye(6, dtype=torch.float64)[[0, 0, 1, 2, 3, 4, 1, 5]]
TOY_Y = torch.tensor([3.0, 3.0, 1.0, 1.0, 0.5, 0.7, 0.0, 0.0], dtype=torch.float64)
TOY_IDS = [f"s{i}" for i in range(8)]


def toy_losses(params):
    return 0.5 * (TOY_X @ params["theta"] - TOY_Y) ** 2


def toy_anchors(changes, settings):
    weights = {}
    for name, sign in (("easy", 1.0), ("hard", -1.0)):
        weights[name] = optimize_weights(
            lambda w, sign=sign: outer_objective(w, *changes(w), sign, settings), 8, 2,
            outer_steps=settings.outer_steps, outer_lr=settings.outer_lr)
    return round_disjoint(weights["easy"], weights["hard"], TOY_IDS, 2)


@pytest.mark.parametrize("steps", [1, 3])
def test_bilevel_unrolled_finds_known_sets_on_toy(steps):
    settings = BilevelSettings(steps=steps, inner_lr=0.05, outer_steps=60)
    params = {"theta": torch.zeros(6, dtype=torch.float64)}

    def changes(w):
        return unrolled_forgetting(params, toy_losses, None, w, steps=steps, inner_lr=0.05,
                                   retain_weight=0.0)

    easy, hard = toy_anchors(changes, settings)
    assert set(easy) == {"s0", "s1"}
    assert set(hard) == {"s6", "s7"}


def test_bilevel_gram_finds_known_sets_on_toy():
    grads = -TOY_Y[:, None] * TOY_X
    settings = BilevelSettings(outer_steps=60)

    def changes(w):
        return gram_forgetting(w, grads @ grads.T, None, 0.0, inner_lr=0.05, retain_weight=0.0)

    easy, hard = toy_anchors(changes, settings)
    assert set(easy) == {"s0", "s1"}
    assert set(hard) == {"s6", "s7"}


def test_one_step_on_toy_by_hand():
    # w on {s0, s2}: theta_1 = -eta grad(alpha L_R - loss_0 - loss_2) = eta (g_0 + g_2 - alpha
    # g_R) with g_0 = -3 e0, g_2 = -e1 and the retain sample (x = e0, y = 1) g_R = -e0.
    eta, alpha = 0.1, 0.5
    w = torch.zeros(8, dtype=torch.float64)
    w[[0, 2]] = 1.0
    params = {"theta": torch.zeros(6, dtype=torch.float64)}

    def retain(p):
        return 0.5 * (p["theta"][0] - 1.0) ** 2

    delta, retain_increase = unrolled_forgetting(params, toy_losses, retain, w, steps=1,
                                                 inner_lr=eta, retain_weight=alpha)
    delta, retain_increase = delta.detach(), retain_increase.detach()
    theta0 = -3 * eta + alpha * eta
    assert float(delta[0]) == pytest.approx(0.5 * (theta0 - 3) ** 2 - 4.5)
    assert float(delta[2]) == pytest.approx(0.5 * (-eta - 1) ** 2 - 0.5)
    assert float(delta[6]) == pytest.approx(0.5 * eta ** 2)  # s6 shares x = e1
    assert float(retain_increase) == pytest.approx(0.5 * (theta0 - 1) ** 2 - 0.5)
    # first order: eta g_j . (sum w g - alpha g_R), g_R = -e0
    grads = -TOY_Y[:, None] * TOY_X
    g_retain = torch.tensor([-1.0, 0, 0, 0, 0, 0], dtype=torch.float64)
    linear, retain_linear = gram_forgetting(w, grads @ grads.T, grads @ g_retain,
                                            float(g_retain @ g_retain), inner_lr=eta,
                                            retain_weight=alpha)
    assert float(linear[0]) == pytest.approx(eta * (9 - alpha * 3))
    assert float(retain_linear) == pytest.approx(eta * (3 - alpha * 1))


# ---- bilevel on the tiny model --------------------------------------------------------


@pytest.fixture(scope="module")
def tiny64(tiny_lm, small_samples):
    model, tokenizer = tiny_lm
    model = copy.deepcopy(model).double()
    forget = encode_samples(tokenizer, small_samples[:6]).samples
    retain = encode_samples(tokenizer, small_samples[6:9]).samples
    return model, tokenizer, forget, retain


def test_gram_closed_form_equals_unrolled_one_step(tiny64):
    model, tokenizer, forget, retain = tiny64
    pad = pad_id(tokenizer)
    features = gradient_features(model, forget, pad, batch_size=4).double()
    g_retain = retain_feature(model, retain, pad, batch_size=2).double()
    params, forget_losses, retain_loss = model_loss_functions(model, forget, retain, pad)
    w = project_capped_simplex(torch.tensor([0.9, 0.1, 0.5, 0.3, 0.7, 0.2],
                                            dtype=torch.float64), 2)
    settings = BilevelSettings(retain_weight=0.7, retain_penalty=0.3)
    errors = []
    for eta in (1e-2, 1e-3):
        def closed(v, eta=eta):
            return outer_objective(v, *gram_forgetting(
                v, features @ features.T, features @ g_retain, float(g_retain @ g_retain),
                inner_lr=eta, retain_weight=0.7), 1.0, settings)

        def unrolled(v, eta=eta):
            return outer_objective(v, *unrolled_forgetting(
                params, forget_losses, retain_loss, v, steps=1, inner_lr=eta,
                retain_weight=0.7), 1.0, settings)

        a = w.clone().requires_grad_()
        b = w.clone().requires_grad_()
        value_closed, value_unrolled = closed(a), unrolled(b)
        grad_closed, = torch.autograd.grad(value_closed, a)
        grad_unrolled, = torch.autograd.grad(value_unrolled, b)
        gap, reference = (value_closed - value_unrolled).detach(), value_unrolled.detach()
        relative = float(gap.abs() / reference.abs())
        assert relative < 0.02
        torch.testing.assert_close(grad_closed, grad_unrolled, rtol=0.03, atol=0)
        errors.append(relative)
    assert errors[1] < errors[0] / 5  # the gap is of higher order in eta


def test_per_sample_gradients_match_one_sample_backward(tiny64):
    model, tokenizer, forget, _ = tiny64
    features = gradient_features(model, forget[:3], pad_id(tokenizer), batch_size=3)
    for row in range(3):
        single = gradient_features(model, forget[row: row + 1], pad_id(tokenizer))
        torch.testing.assert_close(features[row], single[0], rtol=1e-4, atol=1e-7)


def test_sketch_is_the_dense_projection_and_approximates_the_gram():
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(8, 30, 100, generator=generator), torch.randn(8, 2000,
                                                                        generator=generator)]
    flat = torch.cat([g.reshape(8, -1) for g in grads], dim=1)
    sketch = GradientSketch(64, seed=5, block_entries=64_000)  # blocks of 1000 rows
    projected = sketch.project(grads)
    # the same projection built densely: blocks of 1000 rows drawn in order from the seed
    draw = torch.Generator().manual_seed(5)
    dense = torch.cat([torch.randint(0, 2, (1000, 64), generator=draw).float() * 2 - 1
                       for _ in range(5)])
    torch.testing.assert_close(projected, flat @ dense / 8.0)
    torch.testing.assert_close(sketch.project(grads), projected)  # regenerated identically

    # count sketch: bucket and sign of each coordinate drawn block by block in the same way
    counted = GradientSketch(64, seed=5, block_entries=2500, kind="countsketch").project(grads)
    draw = torch.Generator().manual_seed(5)
    matrix = torch.zeros(5000, 64)
    for start, stop in ((0, 2500), (2500, 3000), (3000, 5000)):  # blocks within each parameter
        buckets = torch.randint(0, 64, (stop - start,), generator=draw)
        signs = torch.randint(0, 2, (stop - start,), generator=draw).float() * 2 - 1
        matrix[torch.arange(start, stop), buckets] = signs
    torch.testing.assert_close(counted, flat @ matrix)

    gram = flat.double() @ flat.double().T

    def error(dim, kind):
        total = 0.0
        for seed in range(3):
            s = GradientSketch(dim, seed=seed, kind=kind).project(grads).double()
            total += float(torch.linalg.norm(s @ s.T - gram) / torch.linalg.norm(gram))
        return total / 3

    for kind in ("rademacher", "gaussian", "countsketch"):
        small, large = error(16, kind), error(1024, kind)
        assert large < 0.2  # about sqrt(N / dim) = 0.09 for nearly orthogonal gradients
        assert large < small / 4  # about sqrt(1024 / 16) = 8 times smaller


def test_bilevel_anchors_on_tiny_model(tiny_lm, small_samples):
    model, tokenizer = tiny_lm
    forget, retain = small_samples[:8], small_samples[8:]
    settings = BilevelSettings(outer_steps=40)
    exact = bilevel_anchors(model, tokenizer, forget, retain, 2, settings=settings)
    ids = [s.id for s in forget]
    for result in (exact,
                   bilevel_anchors(model, tokenizer, forget, retain, 2, settings=settings,
                                   sketch_dim=256),
                   bilevel_anchors(model, tokenizer, forget[:4], None, 2,
                                   settings=BilevelSettings(steps=2, inner_lr=0.05,
                                                            outer_steps=2))):
        assert len(result.easy) == 2 and len(result.hard) == 2
        assert not set(result.easy) & set(result.hard)
        assert set(result.easy) | set(result.hard) <= set(ids)
        for name in ("easy", "hard"):
            assert sum(result.weights[name].values()) == pytest.approx(2.0, abs=1e-6)
    # the exact Gram objective of the rounded easy set beats that of every other pair,
    # and the hard set's is below every pair's but the best few
    pad = pad_id(tokenizer)
    encoded = encode_samples(tokenizer, forget).samples
    features = gradient_features(model, encoded, pad).double()
    g_retain = retain_feature(model, encode_samples(tokenizer, retain).samples, pad).double()
    values = {}
    for pair in itertools.combinations(range(8), 2):
        w = torch.zeros(8, dtype=torch.float64)
        w[list(pair)] = 1
        values[frozenset(ids[i] for i in pair)] = float(outer_objective(
            w, *gram_forgetting(w, features @ features.T, features @ g_retain,
                                float(g_retain @ g_retain), inner_lr=1e-3, retain_weight=1.0),
            1.0, settings))
    ranked = sorted(values, key=values.get)
    assert frozenset(exact.easy) == ranked[-1]
    assert frozenset(exact.hard) in ranked[:3]


# ---- CLI --------------------------------------------------------------------------------


def test_cli_vote_writes_anchors(tmp_path):
    ids = [f"s{i}" for i in range(10)]
    paths = []
    for index, (name, order) in enumerate((("npo", ids), ("graddiff", ids[::-1][3:] + ids[::-1][:3]),
                                           ("rmu", ids[5:] + ids[:5]))):
        run = tmp_path / f"run{index}"
        write_parquet(run / "outcomes.parquet", table_from_order(order))
        (run / "summary.json").write_text(json.dumps({"method": name}))
        paths.append(str(run / "outcomes.parquet"))
    out = tmp_path / "anchors"
    assert main(["anchors", "--method", "vote", "--k", "2", "--outcomes", *paths,
                 "--fit-fraction", "0.5", "--seed", "1", "--out", str(out)]) == 0
    record = json.loads((out / "anchors.json").read_text())
    assert set(record["per_method"]) == {"npo", "graddiff", "rmu"}
    assert len(record["fit_ids"]) == 5 and len(record["held_out_ids"]) == 5
    assert set(record["easy"] + record["hard"]) <= set(record["fit_ids"])
    tables = {m: table_from_order(o) for m, o in (("npo", ids),
                                                  ("graddiff", ids[::-1][3:] + ids[::-1][:3]),
                                                  ("rmu", ids[5:] + ids[:5]))}
    expected = vote_anchors(tables, 2, sample_ids=record["fit_ids"])
    assert (record["easy"], record["hard"]) == (expected.easy, expected.hard)
    assert record["k"] == 2 and record["method"] == "vote"
    assert (out / "config.json").is_file()
    assert main(["anchors", "--method", "vote", "--k", "2", "--outcomes", *paths,
                 "--method-names", "a", "b", "--out", str(out)]) == 2


def test_cli_bilevel_writes_anchors(tiny_model_dir, tmp_path):
    out = tmp_path / "bilevel"
    data = "synthetic:authors?n_authors=4&questions_per_author=3"
    assert main(["anchors", "--method", "bilevel", "--k", "2", "--model", str(tiny_model_dir),
                 "--data", data, "--fit-fraction", "0.5", "--outer-steps", "10",
                 "--sketch-dim", "64", "--sketch-kind", "countsketch", "--retain",
                 "synthetic:authors/retain?n_authors=4&questions_per_author=3", "--max-retain", "3",
                 "--out", str(out)]) == 0
    anchors = read_anchors(out)
    assert len(anchors.fit_ids) == 6 and len(anchors.held_out_ids) == 6
    assert set(anchors.easy + anchors.hard) <= set(anchors.fit_ids)
    assert anchors.diagnostics["data"] == data
    assert set(anchors.diagnostics["weights"]["easy"]) == set(anchors.fit_ids)
    assert main(["anchors", "--method", "bilevel", "--k", "2", "--out", str(out)]) == 2


def test_cli_bilevel_counts_the_samples_cut_to_max_length_in_config_json(tiny_model_dir,
                                                                         tmp_path):
    out = tmp_path / "bilevel"
    forget = load_samples("synthetic:authors?n_authors=4&questions_per_author=3")
    retain = load_samples("synthetic:authors/retain?n_authors=4&questions_per_author=3")[:3]
    tokenizer = load_model(str(tiny_model_dir))[1]
    length = {s.id: len(encode_sample(tokenizer, s).input_ids) for s in forget + retain}
    limit = sorted(length.values())[len(length) // 2]
    assert main(["anchors", "--method", "bilevel", "--k", "2", "--model", str(tiny_model_dir),
                 "--data", "synthetic:authors?n_authors=4&questions_per_author=3",
                 "--fit-fraction", "0.5", "--outer-steps", "1", "--sketch-dim", "16",
                 "--retain", "synthetic:authors/retain?n_authors=4&questions_per_author=3",
                 "--max-retain", "3", "--max-length", str(limit), "--out", str(out)]) == 0
    used = read_anchors(out).fit_ids + [s.id for s in retain]
    config = json.loads((out / "config.json").read_text())
    assert config["n_truncated"] == sum(length[i] > limit for i in used) > 0
