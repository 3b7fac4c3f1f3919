"""Our Kernel SHAP estimator against brute-force Shapley values and shap, on real ONNX models run by onnxruntime."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import onnxruntime as ort
import pytest
import shap
from onnx import TensorProto, helper
from scipy import stats
from skl2onnx import to_onnx
from sklearn.neural_network import MLPClassifier

from engine.errors import InvalidRequest
from engine.methods import kernel_estimator
from engine.methods.kernel_estimator import (
    KernelEstimator,
    _balanced_rows,
    _baseline_control,
    _baseline_slopes,
    _middle_mean,
    _random_subsets,
    _sample_strata,
    _spd_solve,
    _Stratum,
    _weighted_gram,
    allocate,
    t_widening,
)
from tests.builders import helper_model
from tests.shapley import brute_force_shapley

Fn = Callable[[np.ndarray], np.ndarray]


class Counted:
    """An onnxruntime session as ``(n, d)`` float64 → ``(n, k)`` probabilities, counting its calls."""

    def __init__(self, onnx_bytes: bytes) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        self.name = self.session.get_inputs()[0].name
        self.calls: list[int] = []
        self.dtypes: set[np.dtype] = set()

    def __call__(self, z: np.ndarray) -> np.ndarray:
        self.calls.append(len(z))
        self.dtypes.add(np.asarray(z).dtype)
        y = self.session.run(["probabilities"], {self.name: np.asarray(z, dtype=np.float32)})[0]
        return np.asarray(y, dtype=np.float64).reshape(len(z), -1)


def _mlp(d: int, classes: int, seed: int) -> tuple[Counted, np.ndarray, np.ndarray]:
    """A real MLP classifier exported with skl2onnx: ``(f, rows to explain, background of 25 rows)``."""
    X = np.random.default_rng(seed).normal(size=(300, d))
    score = X[:, 0] * X[:, 1] + np.sin(2 * X[:, 2]) + 0.5 * X[:, 3:].sum(axis=1)
    y = np.digitize(score, np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1]))
    est = MLPClassifier(hidden_layer_sizes=(16,), max_iter=400, random_state=0).fit(X, y)
    onx = to_onnx(est, X[:1].astype(np.float32), options={"zipmap": False})
    return Counted(onx.SerializeToString()), X[25:], X[:25]


@pytest.fixture(scope="module")
def mlp10() -> tuple[Counted, np.ndarray, np.ndarray]:
    return _mlp(10, 2, seed=3)


@pytest.fixture(scope="module")
def mlp6_multiclass() -> tuple[Counted, np.ndarray, np.ndarray]:
    return _mlp(6, 3, seed=1)


def group_shapley(f: Fn, x: np.ndarray, background: np.ndarray, groups: Sequence[Sequence[int]]) -> np.ndarray:
    """Brute-force Shapley values of the game whose players are column groups, ``(groups, k)``."""
    g = len(groups)
    values = {}
    for size in range(g + 1):
        for subset in itertools.combinations(range(g), size):
            rows = background.copy()
            cols = [c for j in subset for c in groups[j]]
            rows[:, cols] = x[cols]
            values[subset] = f(rows).mean(axis=0)
    phi = np.zeros((g, len(values[()])))
    for i in range(g):
        others = [j for j in range(g) if j != i]
        for size in range(g):
            weight = math.factorial(size) * math.factorial(g - size - 1) / math.factorial(g)
            for subset in itertools.combinations(others, size):
                phi[i] += weight * (values[tuple(sorted(subset + (i,)))] - values[subset])
    return phi


def _range(f: Fn, *parts: np.ndarray) -> np.ndarray:
    spread: np.ndarray = np.ptp(f(np.vstack(parts)), axis=0)
    return spread


# --------------------------------------------------------------------------- exactness


def test_complete_enumeration_is_exact(mlp6_multiclass: tuple[Counted, np.ndarray, np.ndarray]) -> None:
    f, X, B = mlp6_multiclass
    estimator = KernelEstimator(f, B)
    for x in X[:3]:
        e = estimator.explain(x, budget=2**6 - 2, seed=0)
        base, truth = brute_force_shapley(f, x, B)
        assert e.complete and e.coalitions == 2**6 - 2 and e.dof == 0
        np.testing.assert_allclose(e.values, truth, rtol=0, atol=1e-9)
        np.testing.assert_allclose(e.base_value, base, rtol=0, atol=1e-12)
        assert np.all(e.std_errors == 0)


def test_budget_beyond_every_coalition_evaluates_each_once(
    mlp6_multiclass: tuple[Counted, np.ndarray, np.ndarray],
) -> None:
    f, X, B = mlp6_multiclass
    e = KernelEstimator(f, B).explain(X[0], budget=10_000, seed=0)
    assert e.complete and e.coalitions == 62
    np.testing.assert_allclose(e.values, brute_force_shapley(f, X[0], B)[1], rtol=0, atol=1e-9)


def test_sampled_estimate_is_close_to_exact_and_exactly_additive(
    mlp10: tuple[Counted, np.ndarray, np.ndarray],
) -> None:
    f, X, B = mlp10
    estimator = KernelEstimator(f, B)
    scale = _range(f, B, X)
    for x in X[:3]:
        e = estimator.explain(x, budget=600, seed=1)
        assert not e.complete and e.coalitions <= 600 and e.dof > 0
        truth = brute_force_shapley(f, x, B)[1]
        assert np.all(np.abs(e.values - truth).max(axis=0) <= 1e-2 * scale)
        np.testing.assert_allclose(e.values.sum(axis=0), e.output_value - e.base_value, rtol=0, atol=1e-12)
        np.testing.assert_allclose(e.output_value, f(x[None, :])[0], rtol=0, atol=0)


def test_feature_groups_are_players(mlp10: tuple[Counted, np.ndarray, np.ndarray]) -> None:
    # Groups the way one-hot columns of one raw feature are grouped: one attribution per group.
    f, X, B = mlp10
    groups = [[0, 1], [2], [3, 4, 5], [6], [7, 9], [8]]
    estimator = KernelEstimator(f, B, groups=groups)
    assert estimator.players == 6
    e = estimator.explain(X[0], budget=62, seed=0)
    assert e.complete and e.values.shape == (6, 2)
    np.testing.assert_allclose(e.values, group_shapley(f, X[0], B, groups), rtol=0, atol=1e-9)
    sampled = estimator.explain(X[0], budget=30, seed=0)
    assert not sampled.complete
    np.testing.assert_allclose(sampled.values.sum(axis=0), e.values.sum(axis=0), rtol=0, atol=1e-12)


def test_groups_must_partition_the_columns(mlp10: tuple[Counted, np.ndarray, np.ndarray]) -> None:
    f, _, B = mlp10
    for groups in ([[0, 1], [1, 2, 3, 4, 5, 6, 7, 8, 9]], [[0], [1]]):
        with pytest.raises(InvalidRequest) as err:
            KernelEstimator(f, B, groups=groups)
        assert (err.value.code, err.value.field) == ("invalid_parameter", "groups")


def test_players_equal_to_every_background_value_get_zero(mlp10: tuple[Counted, np.ndarray, np.ndarray]) -> None:
    f, X, B = mlp10
    background = B.copy()
    background[:, [2, 5]] = 0.25
    x = X[0].copy()
    x[[2, 5]] = 0.25
    e = KernelEstimator(f, background).explain(x, budget=2**8 - 2, seed=0)
    assert e.complete and np.all(e.values[[2, 5]] == 0)
    np.testing.assert_allclose(e.values, brute_force_shapley(f, x, background)[1], rtol=0, atol=1e-9)
    # One varying feature takes the whole difference.
    lone = background[0].copy()
    lone[4] = 3.0
    one = KernelEstimator(f, np.repeat(background[:1], 3, axis=0)).explain(lone, budget=100)
    assert one.complete and np.count_nonzero(one.values[:, 1]) <= 1
    np.testing.assert_allclose(one.values[4], one.output_value - one.base_value, rtol=0, atol=1e-15)


# --------------------------------------------------------------------------- seeds, batching, budget


def test_same_seed_same_answer_whatever_the_other_rows(mlp10: tuple[Counted, np.ndarray, np.ndarray]) -> None:
    f, X, B = mlp10
    estimator = KernelEstimator(f, B)
    together = estimator.explain_rows(X[:3], budget=200, seed=7)
    alone = estimator.explain(X[1], budget=200, seed=7)
    np.testing.assert_array_equal(together[1].values, alone.values)
    np.testing.assert_array_equal(together[1].std_errors, alone.std_errors)
    np.testing.assert_array_equal(KernelEstimator(f, B).explain(X[1], budget=200, seed=7).values, alone.values)
    assert not np.array_equal(estimator.explain(X[1], budget=200, seed=8).values, alone.values)


def test_coalitions_of_all_rows_go_to_the_model_in_few_large_calls(
    mlp10: tuple[Counted, np.ndarray, np.ndarray],
) -> None:
    f, X, B = mlp10
    estimator = KernelEstimator(f, B)
    f.calls.clear()
    estimates = estimator.explain_rows(X[:4], budget=500, seed=0)
    coalitions = sum(e.coalitions for e in estimates)
    assert f.calls == [4, coalitions * len(B)]  # f(X), then every coalition of every row at once
    small = KernelEstimator(f, B, max_batch_rows=100 * len(B))
    f.calls.clear()
    small.explain_rows(X[:4], budget=500, seed=0)
    assert max(f.calls[1:]) <= 100 * len(B) and sum(f.calls[1:]) == coalitions * len(B)


def test_float32_coalition_rows_give_the_same_answer_for_a_float32_model(
    mlp10: tuple[Counted, np.ndarray, np.ndarray],
) -> None:
    f, X, B = mlp10
    wide = KernelEstimator(f, B, background_rows=5).explain(X[0], budget=300, seed=4)
    f.dtypes.clear()
    narrow = KernelEstimator(f, B, background_rows=5, dtype=np.float32).explain(X[0], budget=300, seed=4)
    assert np.dtype(np.float32) in f.dtypes
    # The same model inputs; only the control variate's surrogate is fitted on float32-rounded rows.
    np.testing.assert_allclose(narrow.values, wide.values, rtol=0, atol=1e-7)
    np.testing.assert_allclose(narrow.std_errors, wide.std_errors, rtol=1e-3)


def test_budget_below_two_coalitions_per_player_is_refused(mlp10: tuple[Counted, np.ndarray, np.ndarray]) -> None:
    f, X, B = mlp10
    with pytest.raises(InvalidRequest) as err:
        KernelEstimator(f, B).explain(X[0], budget=19)
    assert (err.value.code, err.value.field) == ("invalid_parameter", "parameters.nsamples")
    assert KernelEstimator(f, B).explain(X[0], budget=20).coalitions == 20


# --------------------------------------------------------------------------- error estimate


def test_std_error_is_calibrated_over_seeds(mlp10: tuple[Counted, np.ndarray, np.ndarray]) -> None:
    f, X, B = mlp10
    estimator = KernelEstimator(f, B)
    truth = np.stack([brute_force_shapley(f, x, B)[1][:, 1] for x in X[:3]])
    errors, std_errors = [], []
    for seed in range(20):
        for i, e in enumerate(estimator.explain_rows(X[:3], budget=512, seed=seed)):
            errors.append(np.abs(e.values[:, 1] - truth[i]))
            std_errors.append(e.std_errors[:, 1])
    error, se = np.array(errors), np.array(std_errors)
    assert np.all(se > 0)
    assert np.mean(error <= se) >= 0.6
    assert np.mean(error <= 2 * se) >= 0.9


def test_tolerance_mode_samples_in_rounds_until_every_error_is_below_it(
    mlp10: tuple[Counted, np.ndarray, np.ndarray],
) -> None:
    f, X, B = mlp10
    estimator = KernelEstimator(f, B)
    e = estimator.explain(X[0], budget=1000, seed=2, tolerance=2e-3)
    assert e.converged and e.rounds > 1 and e.coalitions < 1000
    assert e.std_errors.max() <= 2e-3
    tight = estimator.explain(X[0], budget=300, seed=2, tolerance=1e-9)
    assert tight.converged is False and tight.coalitions == 300 and tight.rounds > 1
    np.testing.assert_allclose(tight.values.sum(axis=0), tight.output_value - tight.base_value, rtol=0, atol=1e-12)
    assert estimator.explain(X[0], budget=300, seed=2).converged is None


def test_tolerance_mode_stops_once_every_pair_is_drawn_on_part_of_the_background(
    mlp10: tuple[Counted, np.ndarray, np.ndarray],
) -> None:
    # On 5 of 25 rows a pair costs a fifth of a coalition: all 1,022 pairs cost 204 of the 300 budgeted, so the
    # budget is never spent; the rounds used to go on drawing nothing, for ever.
    f, X, B = mlp10
    e = KernelEstimator(f, B, background_rows=5).explain(X[0], budget=300, seed=2, tolerance=1e-9)
    assert e.converged is False and e.coalitions == 2**10 - 2 and not e.complete
    assert e.rounds <= 6 and e.evaluations < 300 * len(B)
    np.testing.assert_allclose(e.values.sum(axis=0), e.output_value - e.base_value, rtol=0, atol=1e-12)


def test_agrees_with_shap_kernel_explainer_at_large_budgets(mlp10: tuple[Counted, np.ndarray, np.ndarray]) -> None:
    f, X, B = mlp10
    explainer = shap.KernelExplainer(f, B)
    scale = _range(f, B, X)
    for budget, tolerance in ((2**10 - 2, 1e-9), (900, 1e-2)):
        ours = KernelEstimator(f, B).explain(X[0], budget=budget, seed=0).values
        np.random.seed(0)
        theirs = np.asarray(explainer.shap_values(X[:1], nsamples=budget, l1_reg=False, silent=True))
        theirs = theirs.reshape(10, -1)
        assert np.all(np.abs(ours - theirs).max(axis=0) <= tolerance * np.maximum(scale, 1.0))


@pytest.mark.parametrize("r", [5, 4])  # 5 divides the 25 rows: dealt in groups; 4 does not: row by row
def test_background_rows_keep_enumeration_exact_and_the_error_honest(
    mlp10: tuple[Counted, np.ndarray, np.ndarray], r: int
) -> None:
    f, X, B = mlp10
    sub = KernelEstimator(f, B, background_rows=r)
    whole = sub.explain(X[0], budget=2**10 - 2, seed=0)
    assert whole.complete and whole.evaluations == (2**10 - 2) * len(B)
    np.testing.assert_allclose(whole.values, brute_force_shapley(f, X[0], B)[1], rtol=0, atol=1e-9)
    truth = np.stack([brute_force_shapley(f, x, B)[1][:, 1] for x in X[:3]])
    errors, std_errors, means = [], [], []
    for seed in range(20):
        for i, e in enumerate(sub.explain_rows(X[:3], budget=300, seed=seed)):
            assert not e.complete and e.evaluations <= 300 * len(B) + 2 * r
            assert e.control == "baseline"
            assert e.coalitions > 300  # cheaper coalitions: more of them for the same model rows
            np.testing.assert_allclose(e.values.sum(axis=0), e.output_value - e.base_value, rtol=0, atol=1e-12)
            errors.append(np.abs(e.values[:, 1] - truth[i]))
            std_errors.append(e.std_errors[:, 1])
            means.append(e.values[:, 1] - truth[i])
    error, se = np.array(errors), np.array(std_errors)
    assert np.mean(error <= se) >= 0.6
    assert np.mean(error <= 2 * se) >= 0.9
    # Unbiased: the mean over seeds is within a few of its own standard errors of the truth.
    bias = np.abs(np.array(means).reshape(20, 3, -1).mean(axis=0))
    assert np.all(bias <= 4 * se.reshape(20, 3, -1).mean(axis=0) / np.sqrt(20) + 1e-12)


def _sine_sum(d: int) -> Fn:
    """``y = Σ_i sin(u_i)``, built with onnx.helper: additive in the features, but not linear in them."""
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    model = helper_model(
        [helper.make_node("Sin", ["x"], ["s"]), helper.make_node("ReduceSum", ["s", "axes"], ["y"], keepdims=1)],
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, d])],
        initializers=[axes],
    )
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    def f(z: np.ndarray) -> np.ndarray:
        (y,) = session.run(["y"], {"x": np.asarray(z, dtype=np.float32)})
        return np.asarray(y, dtype=np.float64).reshape(len(z), 1)

    return f


def test_baseline_control_takes_out_the_background_noise_of_an_additive_model() -> None:
    # Every background row's game is additive here, so the per-row fit explains the rows' pull in full and
    # what is left is the ridge's shrinkage; the linear surrogate cannot follow sin and leaves the noise in.
    d, m = 12, 20
    f = _sine_sum(d)
    rng = np.random.default_rng(5)
    B, x = rng.normal(size=(m, d)) * 1.5, rng.normal(size=d) * 1.5
    truth = np.sin(x.astype(np.float32)) - np.sin(B.astype(np.float32)).mean(axis=0)
    errors = {}
    for control in ("baseline", "linear"):
        estimator = KernelEstimator(f, B, background_rows=2, control=control)  # type: ignore[arg-type]
        estimates = [estimator.explain(x, budget=400, seed=seed) for seed in range(3)]
        assert all(not e.complete and e.coalitions > 400 for e in estimates)
        errors[control] = max(float(np.abs(e.values[:, 0] - truth).max()) for e in estimates)
    assert errors["linear"] > 0.02
    assert errors["baseline"] < 0.01 * errors["linear"]


def test_too_few_pairs_per_background_row_fall_back_to_the_linear_control(
    mlp10: tuple[Counted, np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    f, X, B = mlp10
    few = [
        KernelEstimator(f, B, background_rows=5, control=c).explain(X[0], 30, seed=1) for c in ("baseline", "linear")
    ]
    np.testing.assert_array_equal(few[0].values, few[1].values)
    assert few[0].control == few[1].control == "linear"
    many = [
        KernelEstimator(f, B, background_rows=5, control=c).explain(X[0], 300, seed=1) for c in ("baseline", "linear")
    ]
    assert np.abs(many[0].values - many[1].values).max() > 0
    assert (many[0].control, many[1].control) == ("baseline", "linear")
    assert KernelEstimator(f, B).explain(X[0], 300, seed=1).control is None  # every pair on the whole background
    # Past the work cap (pairs × players²) the fit is skipped too: the linear control's answer exactly.
    monkeypatch.setattr(kernel_estimator, "BASELINE_MAX_WORK", 1.0)
    capped = KernelEstimator(f, B, background_rows=5).explain(X[0], 300, seed=1)
    np.testing.assert_array_equal(capped.values, many[1].values)
    with pytest.raises(InvalidRequest) as refused:
        KernelEstimator(f, B, control="quadratic")  # type: ignore[arg-type]
    assert refused.value.code == "invalid_parameter"


# --------------------------------------------------------------------------- pieces


def test_allocation_enumerates_the_outer_sizes_first() -> None:
    # p = 10: pairs per size 10, 45, 120, 210 and 126 (the middle size's unordered pairs).
    units = [10, 45, 120, 210, 126]
    kernel = [2 * 9 / (s * (10 - s)) for s in range(1, 5)] + [9 / 25]
    target, enumerated = allocate(units, kernel, 200)
    assert target[:2] == [10, 45] and enumerated == [True, True, False, False, False]
    assert sum(target) == 200 and all(t < u for t, u in zip(target[2:], units[2:], strict=True))
    assert allocate(units, [2, 2, 2, 2, 1], 20)[0] == [5, 5, 4, 4, 2]  # leverage: the same mass per size
    assert allocate(units, kernel, 10_000) == (units, [True] * 5)
    assert allocate(units, kernel, 60, current=[10, 45, 30, 0, 0])[0][2] == 30


def test_allocation_with_cheaper_sampled_pairs() -> None:
    # p = 20; a sampled pair on a tenth of the background costs a tenth: ten times the pairs,
    # but enumeration (which needs every row) only where the share pays for it whole.
    units = [math.comb(20, s) for s in range(1, 10)] + [math.comb(20, 10) // 2]
    masses = [2.0] * 9 + [1.0]
    target, enumerated = allocate(units, masses, 1000, sample_cost=0.1)
    assert enumerated == [True] + [False] * 9 and target[:3] == [20, 190, 1140]
    assert 20 + 0.1 * sum(target[1:]) == pytest.approx(1000, abs=0.1)
    # Budget left once every stratum is covered makes the small ones exact; frozen ones stay sampled.
    small = [10, 45, 120, 210, 126]
    assert allocate(small, [2, 2, 2, 2, 1], 110, sample_cost=0.1) == (small, [True, True, False, False, False])
    frozen, whole = allocate(small, [2, 2, 2, 2, 1], 1000, sample_cost=0.1, sampled=[True] * 5)
    assert frozen == small and not any(whole)


def test_random_subsets_have_the_size_and_are_uniform() -> None:
    rng = np.random.default_rng(3)
    masks = _random_subsets(rng, 60_000, 6, 2)
    assert masks.shape == (60_000, 6) and np.all(masks.sum(axis=1) == 2)
    codes = masks.astype(int) @ (1 << np.arange(6))
    counts = np.unique(codes, return_counts=True)[1]
    assert len(counts) == math.comb(6, 2)
    assert stats.chisquare(counts).pvalue > 1e-3  # seeded: a fixed draw, not a flaky one
    assert np.all(_random_subsets(rng, 50, 300, 150).sum(axis=1) == 150)


@pytest.mark.parametrize("players", [7, 80])
def test_random_subsets_of_mixed_sizes_have_each_its_size_and_are_uniform(players: int) -> None:
    rng = np.random.default_rng(5)
    sizes = np.repeat([1, 3, 2], [7_000, 35_000, 21_000])
    masks = _random_subsets(rng, len(sizes), players, sizes)
    assert np.array_equal(masks.sum(axis=1), sizes)
    for size in (1, 2, 3):  # every subset of the first 7 players' sizes equally often, size by size
        rows = masks[sizes == size]
        codes = rows[:, :7].astype(int) @ (1 << np.arange(7))
        if players == 7:
            counts = np.unique(codes, return_counts=True)[1]
            assert len(counts) == math.comb(7, size)
            assert stats.chisquare(counts).pvalue > 1e-3
        else:  # each player as often as the others
            assert stats.chisquare(rows.sum(axis=0)).pvalue > 1e-3


@pytest.mark.parametrize("p", [40, 70])  # a mask's key: one uint64 up to 64 players, its packed bytes past them
def test_strata_sampled_together_draw_without_replacement_across_rounds(p: int) -> None:
    rng = np.random.default_rng(2)
    sizes = (1, 2, 6, 13, p // 2)
    strata = [_Stratum(s, math.comb(p, s) // (2 if 2 * s == p else 1), 1.0, 2 * s == p) for s in sizes]
    asked = [30, 500, 300, 300, 300]  # a listed stratum drawn whole, a listed one, three by rejection
    for _ in range(3):
        drawn = _sample_strata(rng, p, list(zip(strata, asked, strict=True)))
        for st, pairs, n in zip(strata, drawn, asked, strict=True):
            st.drawn.append(pairs)
            assert len(pairs) == min(n, st.units - st.count + len(pairs))
            assert np.all(pairs.sum(axis=1) == st.size)
    for st in strata:
        every = np.concatenate(st.drawn)
        assert len(np.unique(every, axis=0)) == len(every) == min(st.units, 3 * asked[strata.index(st)])
        if st.half:
            assert every[:, 0].all()  # the middle size's pair is named by its member holding player 0


@pytest.mark.parametrize(
    ("d", "huge"),
    [(6, False), (6, True), (20, False), (20, True)],  # by column up to 16 columns, else by the blend or masked copy
)
def test_coalition_rows_hold_x_on_the_coalition_and_the_background_row_elsewhere(d: int, huge: bool) -> None:
    """Every model row of a coalition on the whole background is its background row with its own x on the
    coalition's columns, whichever way it was masked (two rows explained in the same calls; a background value
    past float32's range takes the masked copy)."""
    rng = np.random.default_rng(d)
    B, X = rng.normal(size=(9, d)), rng.normal(size=(2, d))
    if huge:
        B[3, 2] = 1e300
    seen: list[np.ndarray] = []

    def f(z: np.ndarray) -> np.ndarray:
        seen.append(np.array(z))
        return np.tanh(np.asarray(z, dtype=np.float64) @ np.linspace(-1, 1, d))[:, None]

    KernelEstimator(f, B).explain_rows(X, budget=4 * d, seed=0)
    coalitions = np.concatenate(seen[2:]).reshape(-1, len(B), d)  # after the background's and the rows' own calls
    assert len(coalitions) >= 2 * 4 * d
    owners = []
    for rows in coalitions:
        fits = []
        for i, x in enumerate(X):
            held = (rows == x).all(axis=0)  # a column the coalition holds: this x on every background row
            if np.array_equal(rows, np.where(held, x, B)) and 0 < held.sum() < d:
                fits.append(i)
        assert fits, "a coalition row that is neither x nor its background row on some column"
        owners += fits
    assert set(owners) == {0, 1}


def test_rows_dealt_in_groups_give_each_pair_a_whole_group_and_each_group_once_a_round() -> None:
    rng = np.random.default_rng(3)
    partition = rng.permutation(20).reshape(5, 4)
    dealt = _balanced_rows(rng, 23, 20, 4, partition)  # 4 whole rounds of 5 pairs, then 3 pairs of a fifth
    groups = {tuple(sorted(g)) for g in partition.tolist()}
    assert dealt.shape == (23, 4) and all(tuple(sorted(rows)) in groups for rows in dealt.tolist())
    for round_ in range(4):
        assert sorted(map(sorted, dealt[5 * round_ : 5 * round_ + 5].tolist())) == sorted(map(sorted, groups))
    assert len({tuple(sorted(rows)) for rows in dealt[20:].tolist()}) == 3
    # Every row once a round, whichever way the rounds are dealt.
    assert np.array_equal(np.bincount(dealt[:20].ravel(), minlength=20), np.full(20, 4))
    assert np.array_equal(np.bincount(_balanced_rows(rng, 20, 20, 4).ravel(), minlength=20), np.full(20, 4))


def test_grouped_fits_give_the_per_row_slopes_and_controls() -> None:
    """Rows dealt in groups share one design and one solve a group: the same slopes and controls, to float32
    rounding, as the fit of each row on its own."""
    rng = np.random.default_rng(11)
    m, r, p, k, pairs = 40, 8, 24, 2, 300
    partition = rng.permutation(m).reshape(m // r, r)
    members = _random_subsets(rng, pairs, p, rng.integers(1, p // 2 + 1, size=pairs))
    dealt = _balanced_rows(rng, pairs, m, r, partition)
    rounds = np.arange(pairs) // (m // r)
    U = 2 * members.astype(np.float32) - 1
    spread = (np.einsum("np,bpk->nbk", U, rng.normal(size=(m, p, k)))[np.arange(pairs)[:, None], dealt]
              + rng.normal(size=(pairs, r, k)) * 0.3).astype(np.float32)  # fmt: skip
    half = rounds % 2 == 0
    args = (U[half], dealt[half], rounds[half] // 2, spread[half], m)
    np.testing.assert_allclose(_baseline_slopes(*args, partition), _baseline_slopes(*args), rtol=2e-3, atol=2e-4)
    grouped = _baseline_control(members, dealt, rounds, spread, m, partition)
    per_row = _baseline_control(members, dealt, rounds, spread, m)
    np.testing.assert_allclose(grouped, per_row, rtol=2e-3, atol=2e-4)
    assert np.abs(per_row).max() > 0.5  # the controls are not trivially zero


def test_middle_mean_is_the_mean_over_the_middle_axis() -> None:
    values = np.random.default_rng(0).normal(size=(37, 10, 3))
    np.testing.assert_allclose(_middle_mean(values), values.mean(axis=1), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(_middle_mean(values[:, ::2]), values[:, ::2].mean(axis=1), rtol=1e-13, atol=1e-15)


class _TiedKeys:
    """A generator whose float32 keys all tie, so every row takes the float64 redraw."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def random(self, shape: tuple[int, int], dtype: type = np.float64) -> np.ndarray:
        return np.zeros(shape, np.float32) if dtype is np.float32 else self.rng.random(shape)


def test_random_subsets_redraw_rows_whose_cut_falls_in_a_tie() -> None:
    masks = _random_subsets(_TiedKeys(0), 500, 8, 3)  # type: ignore[arg-type]
    assert np.all(masks.sum(axis=1) == 3)
    assert len(np.unique(masks, axis=0)) == math.comb(8, 3)  # fresh uniform draws, not one repeated subset


@pytest.mark.parametrize("p", [5, kernel_estimator.POSV_PLAYERS, 64])
def test_spd_solve_is_the_batched_solve_of_positive_definite_systems(p: int) -> None:
    rng = np.random.default_rng(p)
    U = np.sign(rng.normal(size=(7, 3 * p, p))).astype(np.float32)  # ±1 designs, as the per-row fit's
    a = U.transpose(0, 2, 1) @ U + 1e-3 * np.eye(p, dtype=np.float32)
    b = rng.normal(size=(7, p, 2)).astype(np.float32)
    got = _spd_solve(a, b)
    assert got.dtype == np.float32 and got.shape == b.shape
    np.testing.assert_allclose(a @ got, b, rtol=0, atol=2e-3 * np.abs(b).max())
    np.testing.assert_allclose(got, np.linalg.solve(a.astype(np.float64), b.astype(np.float64)), rtol=2e-3, atol=1e-5)


def test_spd_solve_falls_back_to_lu_for_a_system_that_is_not_positive_definite() -> None:
    p = kernel_estimator.POSV_PLAYERS
    rng = np.random.default_rng(1)
    spd = np.eye(p) * 3.0
    indefinite = np.diag(np.r_[-2.0, np.ones(p - 1)])  # symmetric, one negative eigenvalue: Cholesky fails
    a, b = np.stack([spd, indefinite]), rng.normal(size=(2, p, 1))
    np.testing.assert_allclose(_spd_solve(a, b), np.linalg.solve(a, b), rtol=1e-12)


def test_weighted_gram_of_binary_members_is_exact() -> None:
    rng = np.random.default_rng(0)
    members = [[rng.random((n, 40)) < 0.3, rng.random((3, 40)) < 0.5] for n in (5, 300, 2000)]
    weights = [0.37, 1e-5, 2.5e3]
    gram, sums = _weighted_gram(list(zip(members, weights, strict=True)), 40)
    Z = [np.concatenate(m).astype(np.float64) for m in members]
    np.testing.assert_allclose(gram, sum(w * z.T @ z for w, z in zip(weights, Z, strict=True)), rtol=1e-15)
    np.testing.assert_allclose(sums, sum(w * z.sum(axis=0) for w, z in zip(weights, Z, strict=True)), rtol=1e-15)


@pytest.mark.parametrize("dof", [5, 8, 20, 100, 1000])
def test_t_widening_matches_scipy(dof: int) -> None:
    exact = stats.t.ppf(0.975, dof) / stats.norm.ppf(0.975)
    assert t_widening(dof) == pytest.approx(exact, rel=2e-3)


def test_outputs_a_float32_rounding_apart_share_one_error_pass(mlp10: tuple[Counted, np.ndarray, np.ndarray]) -> None:
    f, X, B = mlp10  # float32 probabilities: p and 1 − p agree to a rounding, not exactly
    both = KernelEstimator(f, B, background_rows=5).explain(X[0], budget=300, seed=4)
    alone = KernelEstimator(lambda z: f(z)[:, 1:], B, background_rows=5).explain(X[0], budget=300, seed=4)
    # Products of other shapes, and the per-background-row control is fitted in float32: a rounding of that apart.
    np.testing.assert_allclose(both.values[:, 1:], alone.values, rtol=1e-5)
    # Class 1's error taken from class 0's pass is the one its own pass gives.
    np.testing.assert_allclose(both.std_errors[:, 1:], alone.std_errors, rtol=1e-4)
    np.testing.assert_allclose(both.std_errors[:, 0], both.std_errors[:, 1], rtol=1e-4)
    rng = np.random.default_rng(0)
    res_in, res_out = rng.normal(size=(200, 1)), rng.normal(size=(200, 1))
    rounded = np.hstack([res_in, (-res_in).astype(np.float32)]), np.hstack([res_out, (-res_out).astype(np.float32)])
    assert kernel_estimator._proportional(*rounded, 1) == (0, pytest.approx(-1.0, abs=1e-6))
    other = np.hstack([res_in, -res_in + 1e-3 * rng.normal(size=(200, 1))]), np.hstack([res_out, -res_out])
    assert kernel_estimator._proportional(*other, 1) is None


def test_a_model_returning_a_view_of_its_rows_is_answered_right_across_calls() -> None:
    rng = np.random.default_rng(5)
    B, x = rng.normal(size=(20, 6)), rng.normal(size=6)
    calls: list[int] = []

    def f(z: np.ndarray) -> np.ndarray:
        calls.append(len(z))
        return z[:, 2:4]  # a view of the coalition rows, which the next call overwrites

    estimator = KernelEstimator(f, B, max_batch_rows=4 * len(B))
    for seed in range(2):  # the second row reuses the first one's buffer
        e = estimator.explain(x, budget=40, seed=seed)
        expected = np.zeros((6, 2))
        expected[[2, 3], [0, 1]] = x[2:4] - B[:, 2:4].mean(axis=0)  # an additive game: every pair is exact
        np.testing.assert_allclose(e.values, expected, rtol=0, atol=1e-12)
    assert len(calls) > 4
