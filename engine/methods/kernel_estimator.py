"""Kernel SHAP, our own: stratified paired sampling without replacement and an exactly constrained solve.

The game is the interventional one, ``v(S) = mean_b f(x_S ∪ b_S̄)`` over the
background rows ``b``; its players are features, or groups of columns. Kernel
SHAP is the weighted least-squares problem whose solution over *every*
coalition is the Shapley value (Charnes et al. 1988; Lundberg & Lee 2017)::

    min_φ Σ_S ω(|S|) (v(S) − v(∅) − Σ_{i∈S} φ_i)²   subject to   Σ φ = v(N) − v(∅),

with the Shapley kernel ``ω(s) = (p − 1) / (C(p, s) s (p − s))``. This module
estimates that problem's two moment matrices ``A = Σ ω z zᵀ`` and
``b = Σ ω z (v − v(∅))`` from a sample of coalitions and solves it with the
constraint held exactly (a Lagrange multiplier), so ``Σ φ = f(x) − E f(B)``
to rounding whatever the sample.

Sampling:

* **Strata by size, paired.** A coalition of size ``s`` always comes with its
  complement (size ``p − s``, antithetic sampling); the unit drawn is that
  pair, and the strata are the sizes ``s = 1 … ⌊p/2⌋``. The size of each
  draw is therefore *not* random, which removes the variance shap's draw of
  a size per sample carries.
* **Allocation.** The budget (in coalitions, two per pair) is spread over the
  strata by a mass per stratum: ``"leverage"`` (default) gives every size the
  same mass, the leverage scores of the Shapley regression (Musco & Witter,
  "Provably accurate Shapley value estimation via leverage score sampling",
  ICLR 2025); ``"kernel"`` gives each size its Shapley-kernel mass, like
  ``shap`` and R ``kernelshap``. A stratum whose share reaches all its pairs
  is **enumerated completely** (water-filling, which takes the smallest and
  largest sizes first, as shap and R ``kernelshap``'s hybrid do).
* **Without replacement.** Inside a stratum the pairs are a simple random
  sample without replacement; each sampled coalition then carries the
  Horvitz–Thompson weight ``ω(s) · C(p, s) / n`` (its size's kernel mass over
  the coalitions drawn of it), so an enumerated stratum gets exactly the
  kernel weights, and when every stratum is complete the solve *is* the exact
  Shapley value.

Background rows per coalition (``background_rows=r``, default all): at a
fixed number of model evaluations, a sampled pair may be evaluated on ``r``
background rows instead of all ``m``, buying ``m / r`` times as many
coalitions. ``v̂(S)`` over ``r`` rows is unbiased for ``v(S)``; its noise
dominates once the pairs are many, and more pairs on fewer rows do not cut
it (its share of the error is about the same at every ``r`` for a fixed
number of evaluations: measured flat from ``r = 5`` to 20). What cuts it is a
control variate with mean 0 over the dealt rows:

* ``"baseline"`` (default): against one background row ``b`` the game
  ``v_b(S) = f(x_S, b_S̄)`` is nearly additive, far more than the averaged
  game is, so each row's game is fitted by an additive one on the pairs
  dealt that row (paired differences ``v_b(S) − v_b(S̄) ≈ (2z − 1)ᵀγ_b``, least
  squares per row, cross-fitted between even and odd dealing rounds), and a
  pair's control is ``(2z − 1)ᵀ (mean_{b∈R} γ_b − mean_b γ_b)``, what its own
  rows would pull if their games were additive. On the 30-feature MLP of
  ``bench/kernel.py`` it leaves about 12–28 % of the background noise, the
  linear one leaves 55–70 %. It needs :data:`BASELINE_FIT_ROWS` pairs per
  slope and row in each half and costs ``pair-rows × players²``
  multiply-adds (at most :data:`BASELINE_MAX_WORK`); otherwise the estimator
  falls back to ``"linear"``.
* ``"linear"``: a linear surrogate ``g(z) = wᵀz`` (least squares on the
  row's first batch of model rows) gives ``Σ_{j∉S} w_j (b̄_{R,j} − b̄_j)``, the
  part of the rows' pull that ``g`` explains; the rest of the rows' own
  output drift ``f̄_R − E f(B)`` enters with ``(1 − s/p)`` (a coalition of
  ``s`` of ``p`` players keeps about that share of it).

Only ``v̂(S) − v̂(S̄)`` moves ``φ`` (the pair's common part lies along ``1``,
which the constraint projects out), so the baseline control is applied to
that difference. The rows are dealt out in shuffled rounds, each row once a
round, so each serves equally often. When ``r`` divides ``m``, each explained
row splits the background once into ``m / r`` random groups of ``r`` rows and
a round deals every group whole: each pair still gets uniformly chosen rows,
so ``v̂(S)`` stays unbiased and the controls keep their mean 0, and the rows
of a group share their pairs, so the per-row fits share one design and one
solve per group (10 systems instead of 100 for 100 rows and ``r = 10``: 27–30 %
of a 30-feature row's time at 3·10⁴–2·10⁵ evaluations, at errors within 1–5 %
of the per-row dealing's; ``bench/README.md``). Enumerated strata always use every
row, so they stay exact. Measured on the 30- and 100-feature MLPs with 100
background rows at 2 × 10⁵ model evaluations per row, ``r = 10`` gives
0.45 and 0.33 × shap's error with the baseline control, 0.63 and 0.46 ×
with the linear one (``bench/kernel.py``).

Standard error: the solve is a smooth function of the stratum totals of
``A`` and ``b``; linearising it gives each sampled pair ``j`` an influence
``G Σ_{rows of j} ω z (v − zᵀφ)`` with ``G = A⁻¹ − A⁻¹11ᵀA⁻¹ / 1ᵀA⁻¹1``
(the constraint's projection). Its variance under stratified sampling
without replacement is ``Σ_h n_h (1 − n_h/N_h) s²_h`` (``s²_h`` the sample
variance of the influences in stratum ``h``; no finite-population factor
for strata on part of the background, which also makes it conservative for
the balanced dealing of rows), 0 for enumerated strata; strata holding a
single pair are pooled with a neighbour. The result is widened by
``t_{0.975, dof} / z_{0.975}`` (``dof = Σ (n_h − 1)``), so ``±1.96 std_error``
reads as a 95 % interval. This is the linearised (infinitesimal) jackknife
of the stratified design.

``tolerance`` mode samples in rounds (the first a sixteenth of the budget,
then doubling) until every ``std_error`` is below the tolerance or the
budget is spent; later rounds extend each stratum's sample without
replacement, so the final sample is one stratified design.

All coalitions of a round, for every row explained, are evaluated together
(``len(coalitions) × len(background)`` model rows) in as few calls of ``f`` as
:data:`MAX_BATCH_VALUES` allows. Framework-free: numpy, ``engine.errors`` and the array aliases.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy.linalg import get_lapack_funcs

from engine.arrays import BoolArray, FloatArray, IndexArray
from engine.errors import InvalidRequest

__all__ = [
    "Control",
    "KernelEstimate",
    "KernelEstimator",
    "MAX_BATCH_VALUES",
    "Sampling",
    "allocate",
    "t_widening",
]

ModelFn = Callable[[FloatArray], FloatArray]
Sampling = Literal["leverage", "kernel"]
Control = Literal["baseline", "linear"]
Keys = npt.NDArray[Any]  # one key per coalition mask (_keys): uint64, or opaque bytes past 64 players

MAX_BATCH_VALUES = 1 << 21
"""Feature values per ``f`` call (16 MiB as float64, 8 MiB as float32); a call of pairs on part of the background
holds at least :data:`SURROGATE_ROWS` rows (their first call fits the linear control).

Large enough that onnxruntime's per-call cost vanishes, small enough that masking a call's rows and the model
reading them stay in cache: 0.80–0.97× the time of 2²⁴ values per call on the 100- and 300-feature models of
``bench/kernel.py`` (A/B in ``bench/README.md``). The calls share one buffer, allocated once per estimator: a
fresh 8–24 MiB array a call costs its page faults again (0.87× the time on 300 features with one buffer), and
whole-background calls are not raised to :data:`SURROGATE_ROWS` (24 MiB on 300 features: 0.69× the time at
8 MiB, same-process interleaved A/B).
"""

ENUMERATE_UNITS = 20_000
"""Strata with at most this many pairs are listed and sampled by index; larger ones by rejection."""

SURROGATE_ROWS = 20_000
"""At most this many model rows of a row's first batch fit its linear control variate."""

FIRST_ROUND_SHARE = 16
"""``tolerance`` mode: the first round spends ``budget / FIRST_ROUND_SHARE`` coalitions."""

BASELINE_FIT_ROWS = 2
"""The per-background-row control needs this many dealt pairs per slope, per row and cross-fitting half."""

BASELINE_RIDGE = 1e-3
"""Ridge of the per-background-row fits, relative to their diagonal (the pairs dealt that row)."""

BASELINE_MAX_WORK = 4e9
"""Multiply-adds (pair-rows × players²) the per-background-row fit may cost; beyond, the linear control.

The fit's products grow with the square of the players: on 300 features at the default budget they would
double the estimator's time (0.3 s a row), where the linear control is already under half shap's error.
"""

COLUMN_FILL_COLUMNS = 16
"""Up to this many columns, coalitions on the whole background are masked column by column, not by the blend.

The blend's two passes broadcast over a last axis of ``d`` values, and numpy's loop per ``d`` values is most of
their cost when ``d`` is small: 2,048 coalitions × 100 rows, per-coalition ``x``, 2.4 against 1.0 ms at 10 columns,
3.4 against 2.7 at 16, even at 20 (same-process timeit). Rows dealt ``r`` at a time gain less (0.3 against 0.3 ms at
12 columns) and keep the blend.
"""

MASK_CHUNK_VALUES = 1 << 18
"""Coalition-row values (1 MiB as float32) masked per pass, so the copy, the product and the sum meet in cache.

1.08–1.16× faster than 256 KiB (more numpy calls) and 1.06–1.08× faster than 4 MiB on the 100- and 300-feature
models of ``bench/kernel.py`` (same-process interleaved A/B).
"""

LINEAR_CHUNK_VALUES = 1 << 18
"""Pair × column values (2 MiB as float64) of the linear control's temporaries per pass over a row's blocks."""

SMALL_GRAM_WORK = 1 << 24
"""Multiply-adds (pairs × players²) below which the solve's moment matrix is one float64 product, not one a stratum."""

TWIN_TOLERANCE = 1e-5
"""Outputs whose residuals are proportional to this relative precision share one standard-error pass."""

BASELINE_CHUNK_VALUES = 1 << 22
"""Design values per batch of background rows in the per-row fit (16 MiB as float32)."""

POSV_PLAYERS = 20
"""Players from which the per-row fit's systems are solved one by one by Cholesky (:func:`_spd_solve`)."""


@dataclass(frozen=True)
class KernelEstimate:
    """One row's Kernel SHAP estimate.

    Attributes:
        values: ``(players, k)`` attributions; ``values.sum(0) == output_value − base_value``.
        std_errors: ``(players, k)`` t-widened standard errors; 0 for players
            that do not vary and when every coalition was evaluated.
        base_value: ``(k,)`` ``E f(B)``.
        output_value: ``(k,)`` ``f(x)``.
        coalitions: Coalitions evaluated (besides the empty and the full one).
        evaluations: Model rows those coalitions cost (each on the whole
            background, or on ``background_rows`` of it).
        complete: Every coalition was evaluated, so ``values`` are exact.
        rounds: Sampling rounds run (1 without ``tolerance``).
        converged: ``tolerance`` mode: every std_error fell below it; else ``None``.
        dof: Degrees of freedom of the error estimate (0 when complete).
        control: The control variate of the pairs on part of the background
            (``"baseline"`` or ``"linear"``); ``None`` when there were none.
    """

    values: FloatArray
    std_errors: FloatArray
    base_value: FloatArray
    output_value: FloatArray
    coalitions: int
    evaluations: int
    complete: bool
    rounds: int = 1
    converged: bool | None = None
    dof: int = 0
    control: Control | None = None


_NO_KEYS: Keys = np.zeros(0, dtype=np.uint64)


@dataclass
class _Stratum:
    """The pairs ``{S, S̄}`` with ``|S| = size ≤ p/2`` and what has been drawn of them."""

    size: int
    units: int
    mass: float
    half: bool
    drawn: list[BoolArray] = field(default_factory=list)
    inside: list[FloatArray] = field(default_factory=list)  # v̂(S) of each drawn pair, as evaluated
    outside: list[FloatArray] = field(default_factory=list)  # v̂(S̄)
    linear: list[tuple[FloatArray, FloatArray]] = field(default_factory=list)  # linear controls of partial blocks
    dealt: list[IndexArray] = field(default_factory=list)  # partial blocks: (pairs, r) background rows
    slots: list[IndexArray] = field(default_factory=list)  # partial blocks: (pairs,) each pair's dealing round
    spread: list[FloatArray] = field(default_factory=list)  # partial blocks: (pairs, r, k) f(x_S, b) − f(x_S̄, b)
    seen: Keys = field(default_factory=lambda: _NO_KEYS)  # replaced, never written in place
    partial: bool = False
    evaluations: int = 0

    @property
    def count(self) -> int:
        return sum(len(d) for d in self.drawn)


@dataclass
class _Block:
    """Pairs drawn in one round from one stratum, and the background rows each is evaluated on."""

    stratum: _Stratum
    pairs: BoolArray
    background: IndexArray | None  # (pairs, r) row indices; None: the whole background
    rounds: IndexArray | None = None  # (pairs,) the dealing round of each pair's rows, counted per explained row


@dataclass
class _Row:
    """One row's state across rounds."""

    x: FloatArray
    players: IndexArray
    rng: np.random.Generator
    strata: list[_Stratum]
    fx: FloatArray
    blocks: list[_Block] = field(default_factory=list)
    surrogate: FloatArray | None = None
    estimate: KernelEstimate | None = None
    baseline: bool = False  # the per-background-row fit ran: later rounds keep it (earlier blocks lack the other)
    dealt_rounds: int = 0  # dealing rounds of background rows so far (_balanced_rows)
    partition: IndexArray | None = None  # (m / r, r): the row's groups of background rows, when r divides m


def allocate(
    units: Sequence[int],
    masses: Sequence[float],
    total: float,
    current: Sequence[int] = (),
    *,
    sample_cost: float = 1.0,
    sampled: Sequence[bool] = (),
) -> tuple[list[int], list[bool]]:
    """Spread a budget of ``total`` pairs over strata in proportion to ``masses``.

    Water-filling: a stratum whose share pays for all its pairs on the whole
    background is **enumerated** and the rest is re-spread over the others;
    the open strata then sample ``share / sample_cost`` pairs, never more than
    they hold (a capped stratum's spare share is re-spread too); shares are
    rounded by largest remainder. Never below ``current``.

    Args:
        units: Pairs in each stratum.
        masses: Sampling mass of each stratum (any positive scale).
        total: Budget, in pairs evaluated on the whole background.
        current: Pairs already drawn per stratum.
        sample_cost: What a sampled pair costs against an enumerated one
            (``background_rows / len(background)``).
        sampled: Strata already sampled on part of the background, which
            can no longer be enumerated.

    Returns:
        ``(pairs per stratum, enumerated per stratum)``.
    """
    n = len(units)
    have = list(current) or [0] * n
    frozen = list(sampled) or [False] * n
    enumerated = [False] * n
    capped = [False] * n
    target = [0] * n
    left = float(total)
    for h in range(n):  # strata complete from earlier rounds cost what they cost
        if have[h] >= units[h] and not frozen[h]:
            enumerated[h], target[h] = True, units[h]
            left -= units[h]
    while True:
        open_ = [h for h in range(n) if not enumerated[h]]
        mass = sum(masses[h] for h in open_)
        if not open_ or left <= 0 or mass <= 0:
            break
        grown = [h for h in open_ if not frozen[h] and left * masses[h] / mass >= units[h]]
        if not grown:
            break
        for h in grown:
            enumerated[h], target[h] = True, units[h]
            left -= units[h]
    while True:
        open_ = [h for h in range(n) if not enumerated[h] and not capped[h]]
        mass = sum(masses[h] for h in open_)
        if not open_ or left <= 0 or mass <= 0:
            break
        full = [h for h in open_ if left * masses[h] / mass / sample_cost >= units[h]]
        if not full:
            shares = [left * masses[h] / mass / sample_cost for h in open_]
            floors = [int(share) for share in shares]
            spare = int(round(left / sample_cost)) - sum(floors)
            for i in sorted(range(len(open_)), key=lambda i: floors[i] - shares[i]):
                if spare <= 0:
                    break
                if floors[i] < units[open_[i]]:
                    floors[i] += 1
                    spare -= 1
            for h, c in zip(open_, floors, strict=True):
                target[h] = c
            break
        for h in full:
            capped[h], target[h] = True, units[h]
            left -= units[h] * sample_cost
    if not any(not enumerated[h] and not capped[h] for h in range(n)):
        # Every stratum is covered: spend what is left making sampled strata exact, smallest first.
        for h in sorted((h for h in range(n) if capped[h] and not frozen[h]), key=lambda h: units[h]):
            extra = units[h] * (1 - sample_cost)
            if extra <= left:
                capped[h], enumerated[h] = False, True
                left -= extra
    return [max(t, c) for t, c in zip(target, have, strict=True)], enumerated


def t_widening(dof: int) -> float:
    """``t_{0.975, dof} / z_{0.975}`` by the Cornish–Fisher series (within 0.2 % from 5 dof; numpy only)."""
    if dof < 1:
        return 1.0
    z = 1.959963984540054
    v = float(dof)
    t = (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
        + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * v**4)
    )
    return t / z


class KernelEstimator:
    """Kernel SHAP estimates of rows against one background (built once, reused for every row).

    Example::

        estimator = KernelEstimator(f, background)
        estimate = estimator.explain(x, budget=2048, seed=7)
        estimate.values, estimate.std_errors  # (d, k) each

    Args:
        f: Batch model function, ``(n, d)`` float64 rows → ``(n, k)`` scores.
        background: Reference rows ``B``, ``(m, d)``.
        groups: Players as column-index groups (a partition of the ``d``
            columns, e.g. one-hot columns of one raw feature together);
            default: one player per column.
        sampling: ``"leverage"`` or ``"kernel"`` allocation (module docstring).
        background_rows: Evaluate each *sampled* pair on this many background
            rows drawn without replacement (both members on the same rows)
            instead of all of them; enumerated strata always use the whole
            background, so they stay exact. Default: all rows.
        max_batch_rows: At most this many model rows per ``f`` call (besides
            :data:`MAX_BATCH_VALUES`).
        dtype: The type of the coalition rows handed to ``f``: ``np.float32``
            halves the memory traffic for a model that reads float32 anyway
            (``f`` must then accept float32 rows); the rows explained and
            the background are passed as given.
        control: The control variate of pairs on part of the background:
            ``"baseline"`` (default) fits each background row's game by an
            additive one once the pairs dealt each row are enough
            (:data:`BASELINE_FIT_ROWS`), else falls back to ``"linear"``, a
            linear surrogate of ``f`` and the rows' output drift (module
            docstring).

    Raises:
        InvalidRequest: Empty background, or groups that are not a partition
            of the columns (``invalid_parameter``).
    """

    def __init__(
        self,
        f: ModelFn,
        background: FloatArray,
        *,
        groups: Sequence[Sequence[int]] | None = None,
        sampling: Sampling = "leverage",
        background_rows: int | None = None,
        max_batch_rows: int = 1 << 20,
        dtype: type[np.floating[Any]] = np.float64,
        control: Control = "baseline",
    ) -> None:
        self.f = f
        self.background = np.asarray(background, dtype=np.float64)
        self.dtype = dtype
        self.rows_background = self.background.astype(dtype)
        # Masking by multiply-and-add needs finite rows (0 × inf is NaN); a float64 value past float32's range
        # is not, so such a background keeps the masked copy.
        self._blend = bool(np.isfinite(self.rows_background).all())
        if self.background.ndim != 2 or len(self.background) == 0:
            raise InvalidRequest("Kernel SHAP needs background rows", code="background_required", field="background")
        d = self.background.shape[1]
        self.groups = [
            np.asarray(g, dtype=np.intp) for g in (groups if groups is not None else [[j] for j in range(d)])
        ]
        flat = np.concatenate(self.groups) if self.groups else np.zeros(0, np.intp)
        if sorted(flat.tolist()) != list(range(d)):
            raise InvalidRequest(
                f"feature groups must cover each of the {d} columns exactly once",
                code="invalid_parameter",
                field="groups",
            )
        self.column_player = np.empty(d, dtype=np.intp)
        for player, cols in enumerate(self.groups):
            self.column_player[cols] = player
        if sampling not in ("leverage", "kernel"):
            raise InvalidRequest(f"unknown sampling {sampling!r}", code="invalid_parameter", field="sampling")
        self.sampling: Sampling = sampling
        if control not in ("baseline", "linear"):
            raise InvalidRequest(f"unknown control {control!r}", code="invalid_parameter", field="control")
        self.control: Control = control
        m = len(self.background)
        self.background_rows = m if background_rows is None else int(min(max(background_rows, 1), m))
        # Rows per call: of pairs on the whole background, and of pairs on part of it (which fit the surrogate).
        self.whole_rows_per_call = int(max(m, min(max_batch_rows, MAX_BATCH_VALUES // max(d, 1))))
        self.rows_per_call = int(max(m, min(max_batch_rows, max(SURROGATE_ROWS, MAX_BATCH_VALUES // max(d, 1)))))
        self._buffer: FloatArray | None = None  # the calls' coalition rows, grown to the largest call
        self.background_output = np.asarray(self.f(self.background), dtype=np.float64).reshape(m, -1)
        self.base_value = self.background_output.mean(axis=0)
        self.background_mean = self.background.mean(axis=0)
        self._rows_and_outputs = np.hstack([self.background, self.background_output])  # a row's pull, one product

    @property
    def players(self) -> int:
        """Number of players (groups, or columns)."""
        return len(self.groups)

    def explain(self, x: FloatArray, budget: int, seed: int = 0, tolerance: float | None = None) -> KernelEstimate:
        """Estimate one row's attributions (see :meth:`explain_rows`)."""
        return self.explain_rows(np.asarray(x, dtype=np.float64)[None, :], budget, seed, tolerance)[0]

    def explain_rows(
        self, X: FloatArray, budget: int, seed: int = 0, tolerance: float | None = None
    ) -> list[KernelEstimate]:
        """Estimate the attributions of each row; a row's answer depends only on the row, budget and seed.

        Args:
            X: Rows ``(n, d)``.
            budget: Coalitions per row (besides the empty and full ones), each
                on the whole background: ``budget × len(background)`` model
                rows (a coalition on ``background_rows`` costs that share of
                one); at least ``2 × players`` unless it covers every coalition.
            seed: Seed of every random choice (the same stream for each row).
            tolerance: Sample in rounds until every std_error is at most this,
                or the budget is spent.

        Returns:
            One :class:`KernelEstimate` per row.

        Raises:
            InvalidRequest: ``budget`` below two coalitions per varying
                player while sampling would be needed (``invalid_parameter``).
        """
        X = np.asarray(X, dtype=np.float64).reshape(-1, self.background.shape[1])
        fx = np.asarray(self.f(X), dtype=np.float64).reshape(len(X), -1)
        rows = [self._row(x, fx[i], seed) for i, x in enumerate(X)]
        m = len(self.background)
        for row in rows:
            p = len(row.players)
            complete = p < 2 or budget >= 2**p - 2
            least = -(-2 * p * self.background_rows // m)
            if not complete and budget < least:
                raise InvalidRequest(
                    f"a budget of {budget} coalitions is below what 2 × {p} varying features need: Kernel SHAP's "
                    f"regression needs at least {2 * p} coalitions, i.e. nsamples >= {least} here; raise nsamples",
                    code="invalid_parameter",
                    field="parameters.nsamples",
                )
        first = budget if tolerance is None else max(budget // FIRST_ROUND_SHARE, 0)
        spend = {id(row): min(budget, max(first, -(-2 * len(row.players) * self.background_rows // m))) for row in rows}
        active = rows
        rounds = 0
        while active:
            rounds += 1
            fresh = [self._draw(row, spend[id(row)]) for row in active]
            self._evaluate(fresh)
            still: list[_Row] = []
            for row in fresh:
                row.estimate = self._solve(row, rounds, tolerance)
                spent = row.estimate.evaluations / len(self.background)
                if (
                    tolerance is not None
                    and not row.estimate.converged
                    and not row.estimate.complete
                    and spent < budget - 2
                    # Pairs on part of the background cost less than the budget counts, so every pair can be
                    # drawn before it is spent: then there is nothing left to sample.
                    and any(st.count < st.units for st in row.strata)
                    and (row.blocks or spend[id(row)] < budget)  # a round at the whole budget that drew nothing
                ):
                    spend[id(row)] = min(budget, 2 * spend[id(row)])
                    still.append(row)
            active = still
        out = [row.estimate for row in rows]
        assert all(e is not None for e in out)
        return [e for e in out if e is not None]

    # ------------------------------------------------------------------ sampling

    def _row(self, x: FloatArray, fx: FloatArray, seed: int) -> _Row:
        cols_vary = np.any(self.background != x[None, :], axis=0)
        player_vary = np.zeros(self.players, dtype=bool)
        np.logical_or.at(player_vary, self.column_player, cols_vary)
        players = np.flatnonzero(player_vary)
        p = len(players)
        strata = []
        for s in range(1, p // 2 + 1):
            half = 2 * s == p
            units = math.comb(p, s) // (2 if half else 1)
            if self.sampling == "kernel":
                mass = (p - 1) / (s * (p - s)) * (1 if half else 2)
            else:
                mass = 1.0 if half else 2.0
            strata.append(_Stratum(s, units, mass, half))
        return _Row(x, players, np.random.default_rng(seed), strata, fx)

    def _draw(self, row: _Row, coalitions: int) -> _Row:
        """Extend the row's sample to a cost of about ``coalitions`` whole-background coalitions."""
        strata = row.strata
        m = len(self.background)
        r = self.background_rows
        target, enumerated = allocate(
            [st.units for st in strata],
            [st.mass for st in strata],
            coalitions / 2,
            [st.count for st in strata],
            sample_cost=r / m,
            sampled=[st.partial for st in strata],
        )
        row.blocks = []
        wanted = [(st, want - st.count, whole) for st, want, whole in zip(strata, target, enumerated, strict=True)]
        wanted = [(st, count, whole) for st, count, whole in wanted if count > 0]
        drawn = _sample_strata(row.rng, len(row.players), [(st, count) for st, count, _ in wanted])
        # The pairs on part of the background, of every stratum of this round, are dealt their rows together:
        # each pair its own r rows without replacement, in shuffled rounds of all m so every row serves equally.
        partial = [not whole and r < m for _, _, whole in wanted]
        total = sum(len(pairs) for pairs, on_part in zip(drawn, partial, strict=True) if on_part)
        dealt, slots = np.zeros((0, r), dtype=np.intp), np.zeros(0, dtype=np.intp)
        if total:
            per_round = m // r
            if row.partition is None and m % r == 0:
                row.partition = row.rng.permutation(m).reshape(m // r, r).astype(np.intp)
            dealt = _balanced_rows(row.rng, total, m, r, row.partition)
            slots = row.dealt_rounds + np.arange(total, dtype=np.intp) // per_round
            row.dealt_rounds += -(-total // per_round)
        at = 0
        for (st, _, _), pairs, on_part in zip(wanted, drawn, partial, strict=True):
            block = _Block(st, pairs, None)
            if on_part:
                block.background, block.rounds = dealt[at : at + len(pairs)], slots[at : at + len(pairs)]
                at += len(pairs)
                st.partial = True
            st.drawn.append(pairs)
            st.evaluations += 2 * len(pairs) * (m if block.background is None else r)
            row.blocks.append(block)
        return row

    # ------------------------------------------------------------------ evaluation

    def _evaluate(self, rows: list[_Row]) -> None:
        """Compute ``v(S)`` for every new coalition of every row, in few large ``f`` calls."""
        m, d = self.background.shape
        k = len(self.base_value)
        # Pieces of (row, block, first pair, pairs), each pair's two coalitions together, packed into calls.
        pieces: list[tuple[_Row, _Block, int, int, int]] = []
        for row in rows:
            for block in row.blocks:
                r = m if block.background is None else block.background.shape[1]
                step = max(1, self._call_rows(block) // (2 * r))
                for start in range(0, len(block.pairs), step):
                    pieces.append((row, block, start, min(step, len(block.pairs) - start), r))
        results: dict[int, list[FloatArray]] = {id(block): [] for row in rows for block in row.blocks}
        spreads: dict[int, list[FloatArray]] = {id(block): [] for row in rows for block in row.blocks}
        # The linear surrogate is fitted only for rows whose per-background-row fit will not have the data.
        linear = {id(row) for row in rows if not self._baseline_fit(row)}
        i = 0
        while i < len(pieces):
            call: list[tuple[_Row, _Block, int, int, int]] = []
            size = 0
            limit = self._call_rows(pieces[i][1])
            while i < len(pieces) and (not call or size + 2 * pieces[i][3] * pieces[i][4] <= limit):
                call.append(pieces[i])
                size += 2 * pieces[i][3] * pieces[i][4]
                i += 1
            if self._buffer is None or len(self._buffer) < size:
                self._buffer = np.empty((max(size, self.whole_rows_per_call), d), dtype=self.dtype)
            buffer = self._buffer[:size]
            offset = 0
            # Consecutive pieces on as many background rows are masked together: a round's small strata would
            # otherwise cost a dozen numpy calls each, more than onnxruntime's time for their rows.
            for run in _runs(call):
                r = run[0][4]
                count = sum(2 * piece[3] for piece in run)
                view = buffer[offset : offset + count * r].reshape(count, r, d)
                columns = np.zeros((count, self.players), dtype=bool)
                xs = np.empty((count, 1, d), dtype=self.dtype)
                picked: list[IndexArray] = []
                at = 0
                for row, block, start, n, _ in run:
                    members = block.pairs[start : start + n]
                    columns[at : at + n, row.players] = members
                    columns[at + n : at + 2 * n, row.players] = ~members
                    xs[at : at + 2 * n] = row.x.astype(self.dtype)
                    if block.background is not None:
                        picked += [block.background[start : start + n]] * 2
                    at += 2 * n
                dealt = np.concatenate(picked) if picked else None
                chosen = columns[:, self.column_player][:, None, :]  # (count, 1, d): x's columns
                # The three passes over a slice of coalitions that stays in cache between them (MASK_CHUNK_VALUES).
                step = max(1, MASK_CHUNK_VALUES // (r * d))
                for lo in range(0, count, step):
                    part, here = view[lo : lo + step], chosen[lo : lo + step]
                    if dealt is None:
                        np.copyto(part, self.rows_background[None, :, :])
                    else:
                        np.take(self.rows_background, dealt[lo : lo + step], axis=0, out=part, mode="clip")
                    if dealt is None and d <= COLUMN_FILL_COLUMNS:
                        # Each column's coalitions that hold it take x's value, the slice's rows at once.
                        holds, values = here[:, 0, :], xs[lo : lo + step]
                        for j in range(d):
                            held = holds[:, j]
                            part[held, :, j] = values[held, :, j]
                    elif self._blend:
                        # b·(1 − z) + x·z, exact for z in {0, 1}, in two SIMD passes: 2× a masked copy's speed.
                        np.multiply(part, (~here).astype(self.dtype), out=part)
                        np.add(part, np.where(here, xs[lo : lo + step], np.zeros((), self.dtype)), out=part)
                    else:
                        np.copyto(part, np.broadcast_to(xs[lo : lo + step], part.shape), where=here)
                offset += count * r
            y = np.asarray(self.f(buffer), dtype=np.float64).reshape(size, k)
            offset = 0
            for run in _runs(call):
                r = run[0][4]
                count = sum(2 * piece[3] for piece in run)
                values = y[offset : offset + count * r].reshape(count, r, k)
                means = _middle_mean(values)
                at = 0
                for row_, block, _, n, _ in run:
                    if block.background is not None and row_.surrogate is None and id(row_) in linear:
                        take = slice(offset + at * r, offset + min((at + 2 * n) * r, at * r + SURROGATE_ROWS))
                        row_.surrogate = _fit_linear(buffer[take].astype(np.float64), y[take])
                    results[id(block)].append(means[at : at + 2 * n])
                    if block.background is not None:
                        spreads[id(block)].append(values[at : at + n] - values[at + n : at + 2 * n])
                    at += 2 * n
                offset += count * r
        for row in rows:
            controlled: list[_Block] = []
            for block in row.blocks:
                n = len(block.pairs)
                parts = results[id(block)]
                inside = np.concatenate([part[: len(part) // 2] for part in parts])
                outside = np.concatenate([part[len(part) // 2 :] for part in parts])
                assert len(inside) == n
                block.stratum.inside.append(inside)
                block.stratum.outside.append(outside)
                if block.background is not None:
                    assert block.rounds is not None
                    block.stratum.dealt.append(block.background)
                    block.stratum.slots.append(block.rounds)
                    block.stratum.spread.append(np.concatenate(spreads[id(block)]))
                    if id(row) in linear:
                        controlled.append(block)
            # In groups of blocks whose (pairs, d) temporaries stay in cache (one group on 30 features).
            groups: list[list[_Block]] = []
            filled = math.inf  # values in the open group; none open yet
            for block in controlled:
                if filled + len(block.pairs) * d > LINEAR_CHUNK_VALUES:
                    groups.append([])
                    filled = 0.0
                groups[-1].append(block)
                filled += len(block.pairs) * d
            for group in groups:
                for done, control in zip(group, self._linear_controls(row, group), strict=True):
                    done.stratum.linear.append(control)

    def _call_rows(self, block: _Block) -> int:
        """Model rows per ``f`` call for a block's pairs."""
        return self.whole_rows_per_call if block.background is None else self.rows_per_call

    def _linear_controls(self, row: _Row, blocks: list[_Block]) -> list[tuple[FloatArray, FloatArray]]:
        """The fallback control variates of a row's partial blocks' pairs, ``(inside, outside)`` each ``(n, k)``.

        Both have mean 0 over the dealt rows: a linear surrogate's response to the rows' features on S̄ (S for
        the complement), then (1 − s/p) of the rest of their drift. All the blocks in one pass (their rows'
        means in one product), split back per block.
        """
        dealt = np.concatenate([block.background for block in blocks if block.background is not None])
        counts = [len(block.pairs) for block in blocks]
        sizes = np.repeat([block.stratum.size for block in blocks], counts)
        share = (sizes / len(row.players))[:, None]
        ends = np.cumsum(counts).tolist()
        d = self.background.shape[1]
        if row.surrogate is None:
            drift = _middle_mean(self.background_output[dealt]) - self.base_value
            inside, outside = (1 - share) * drift, share * drift
        else:
            w = row.surrogate  # (d, k)
            means = _row_means(self._rows_and_outputs, dealt)
            D = means[:, :d] - self.background_mean  # (n, d)
            drift = means[:, d:] - self.base_value
            cols = np.zeros((len(dealt), self.players), dtype=bool)
            cols[:, row.players] = np.concatenate([block.pairs for block in blocks])
            z = cols[:, self.column_player]
            whole = D @ w
            lin_out = (D * z) @ w
            lin_in = whole - lin_out  # (D * ~z) @ w: rows from b on S̄
            resid = drift - whole
            inside, outside = lin_in + (1 - share) * resid, lin_out + share * resid
        # Slices, not np.split: a dozen blocks a row, where np.split's own work was a third of this function's.
        return [(inside[lo:hi], outside[lo:hi]) for lo, hi in zip([0, *ends], ends, strict=False)]

    def _baseline_fit(self, row: _Row) -> bool:
        """Whether the per-background-row fit runs: :data:`BASELINE_FIT_ROWS` pairs per slope, row and half, and
        at most :data:`BASELINE_MAX_WORK` for its products."""
        if self.control != "baseline":
            return False
        if row.baseline:
            return True
        p = len(row.players)
        pair_rows = sum(st.count for st in row.strata if st.partial) * self.background_rows
        return 2 * len(self.background) * BASELINE_FIT_ROWS * p <= pair_rows and pair_rows * p * p <= BASELINE_MAX_WORK

    def _baseline_controls(self, row: _Row) -> dict[int, FloatArray]:
        """:func:`_baseline_control` over all the row's partial pairs, split back by stratum (``id`` → ``(n_h, k)``)."""
        partial = [st for st in row.strata if st.partial]
        m = len(self.background)
        control = _baseline_control(
            np.concatenate([pairs for st in partial for pairs in st.drawn]),
            np.concatenate([rows for st in partial for rows in st.dealt]),
            np.concatenate([slots for st in partial for slots in st.slots]),
            np.concatenate([spread for st in partial for spread in st.spread]),
            m,
            row.partition,
        )
        ends = np.cumsum([st.count for st in partial])
        return {id(st): part for st, part in zip(partial, np.split(control, ends[:-1]), strict=True)}

    # ------------------------------------------------------------------ the solve

    def _solve(self, row: _Row, rounds: int, tolerance: float | None) -> KernelEstimate:
        """Constrained weighted least squares over the row's sample, with its linearised standard error."""
        k = len(self.base_value)
        values = np.zeros((self.players, k))
        errors = np.zeros((self.players, k))
        delta = row.fx - self.base_value
        p = len(row.players)
        if p < 2:
            values[row.players] = delta  # one player takes f(x) − E f(B); none takes nothing
            return KernelEstimate(values, errors, self.base_value, row.fx, 0, 0, True, rounds, _conv(tolerance, 0.0))
        # One row per sampled pair: its size-s member Z1 (the complement is 1 − Z1), both members' values.
        members: list[BoolArray] = []
        weighted: list[tuple[list[BoolArray], float]] = []  # each stratum's members and their one weight
        inside: list[FloatArray] = []
        outside: list[FloatArray] = []
        weights: list[tuple[float, int]] = []  # each stratum's weight and pairs
        spans: list[tuple[IndexArray, int, float]] = []  # pair indices, n_h, N_h per stratum
        units = 0
        baseline = self._baseline_controls(row) if self._baseline_fit(row) else None
        row.baseline = baseline is not None
        for st in row.strata:
            if not st.drawn:
                continue
            n_h = st.count
            # Horvitz–Thompson: the size's kernel mass (p − 1)/(s (p − s)) over the coalitions drawn of it.
            weight = (p - 1) / (st.size * (p - st.size)) / (n_h * (2 if st.half else 1))
            members += st.drawn
            weighted.append((st.drawn, weight))
            v_in, v_out = _joined(st.inside), _joined(st.outside)
            if st.partial and baseline is not None:
                v_in = v_in - baseline[id(st)]  # only v̂(S) − v̂(S̄) moves φ, so the control goes on one side
            elif st.partial:
                v_in = v_in - _joined([control for control, _ in st.linear])
                v_out = v_out - _joined([control for _, control in st.linear])
            inside.append(v_in)
            outside.append(v_out)
            weights.append((weight, n_h))
            # Pairs on part of the background are not a finite population any more: no correction.
            spans.append((units + np.arange(n_h, dtype=np.intp), n_h, math.inf if st.partial else float(st.units)))
            units += n_h
        # Each pair's rows are z and 1 − z with one weight: A and b from the members alone (half the work).
        Z0 = np.concatenate(members)
        Z1 = Z0.astype(np.float64)
        w1 = np.repeat([weight for weight, _ in weights], [n_h for _, n_h in weights])
        y_in = np.concatenate(inside) - self.base_value
        y_out = np.concatenate(outside) - self.base_value
        if len(Z1) * p * p <= SMALL_GRAM_WORK or len(Z1) < p * len(weighted):
            # A small sample, or strata of fewer pairs than players (300 features at 2048 coalitions: 150 strata
            # of 7 pairs, 5 against 35 ms): one weighted product; the per-stratum float32 ones pay off when large.
            weighted_rows = Z1 * w1[:, None]
            S, q = weighted_rows.T @ Z1, weighted_rows.sum(axis=0)
        else:
            S, q = _weighted_gram(weighted, p)
        A = 2 * S + w1.sum() - q[:, None] - q[None, :]
        b = Z1.T @ (w1[:, None] * (y_in - y_out)) + (w1 @ y_out)[None, :]
        A_inv = _inverse(A)
        c = A_inv.sum(axis=1)  # A⁻¹ 1
        phi = A_inv @ b
        phi -= np.outer(c, (phi.sum(axis=0) - delta) / c.sum())  # the Lagrange step onto Σ φ = Δ
        values[row.players] = phi
        control: Control | None = None
        if any(st.partial for st in row.strata):
            control = "baseline" if baseline is not None else "linear"
        coalitions = 2 * units
        evaluations = sum(st.evaluations for st in row.strata)
        if all(st.count == st.units and not st.partial for st in row.strata):
            return KernelEstimate(
                values, errors, self.base_value, row.fx, coalitions, evaluations, True, rounds, _conv(tolerance, 0.0)
            )
        # Pair j's share of Σ ω z (y − zᵀφ) is t_j = a_j z_j + b_j (1 − z_j); φ moves by G t_j.
        G = A_inv - np.outer(c, c) / c.sum()
        inner = Z1 @ phi  # (1 − z)ᵀφ = Σφ − zᵀφ = Δ − zᵀφ
        res_in = (y_in - inner) * w1[:, None]
        res_out = (y_out - (delta[None, :] - inner)) * w1[:, None]
        groups = _pooled(spans)
        dof = sum(n_h - 1 for _, n_h, _ in groups)
        # The sampled pairs group after group (each group a run of rows), the runs' starts and their scales.
        ids = np.concatenate([g[0] for g in groups]) if groups else np.zeros(0, dtype=np.intp)
        sizes = np.array([len(g[0]) for g in groups], dtype=np.intp)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        label = np.repeat(np.arange(len(groups)), sizes)
        scale = np.array([math.sqrt(n_h * (1 - n_h / N_h) / (n_h - 1)) for _, n_h, N_h in groups])
        grouped = Z0[ids]
        bounds = np.append(starts, len(ids))
        se = np.zeros((p, k))
        for out in range(k):
            a, b_ = res_in[:, out], res_out[:, out]
            twin = _proportional(res_in, res_out, out)
            if twin is not None:  # e.g. two class probabilities that add up to one: same error, no second pass
                se[:, out] = se[:, twin[0]] * abs(twin[1])
                continue
            # t_j's b_j·1 part moves nothing (G 1 = 0): leaving it out keeps TᵀT's entries of one scale, so
            # the product can run in float32 (an error estimate needs no more digits; it is 2× faster).
            if len(ids):
                # Each group's rows scaled by its factor, less their mean (every group's sum in one reduceat,
                # accumulated in float64), all in float32: half the memory traffic of float64 rows.
                Tc = grouped.astype(np.float32)
                Tc *= ((a - b_)[ids] * scale[label]).astype(np.float32)[:, None]
                means = (np.add.reduceat(Tc, starts, axis=0, dtype=np.float64) / sizes[:, None]).astype(np.float32)
                for g in range(len(sizes)):
                    Tc[bounds[g] : bounds[g + 1]] -= means[g]
                # The rows (G t_j)ᵀ, centred and scaled, summed in squares: diag(G (TᵀT) G), with TᵀT one
                # symmetric product (syrk) instead of the (units × p) @ G one (half the flops, no U).
                C = (Tc.T @ Tc).astype(np.float64)
                se[:, out] = np.sqrt(np.maximum(np.einsum("jl,lj->j", G, C @ G), 0.0))
        se *= t_widening(dof)
        errors[row.players] = se
        return KernelEstimate(
            values,
            errors,
            self.base_value,
            row.fx,
            coalitions,
            evaluations,
            False,
            rounds,
            _conv(tolerance, float(se.max())),
            dof,
            control,
        )


def _runs(call: list[tuple[_Row, _Block, int, int, int]]) -> list[list[tuple[_Row, _Block, int, int, int]]]:
    """A call's pieces in runs of consecutive pieces alike: on the whole background, or on as many dealt rows."""
    out: list[list[tuple[_Row, _Block, int, int, int]]] = []
    for piece in call:
        kind = (piece[1].background is None, piece[4])
        if out and (out[-1][0][1].background is None, out[-1][0][4]) == kind:
            out[-1].append(piece)
        else:
            out.append([piece])
    return out


def _baseline_control(
    members: BoolArray,
    dealt: IndexArray,
    rounds: IndexArray,
    spread: FloatArray,
    m: int,
    partition: IndexArray | None = None,
) -> FloatArray:
    """Each pair's control variate for ``v̂(S) − v̂(S̄)``: its dealt rows' additive games against all rows'.

    Against one background row ``b`` the game ``v_b(S) = f(x_S, b_S̄)`` is fitted by an additive one,
    ``v_b(S) − v_b(S̄) ≈ uᵀγ_b`` with ``u = 2z − 1`` (least squares on the pairs dealt ``b``), and pair ``j``'s
    control is ``u_jᵀ (mean_{b ∈ R_j} γ_b − mean_b γ_b)``: what its own rows' pull would be if each row's game
    were additive. Cross-fitted: the pairs of even dealing rounds take the slopes fitted on the odd rounds and
    the other way round. Rounds are dealt independently, so a pair's control is a fixed function of its own
    uniformly dealt rows, with mean 0 over the dealing.

    Args:
        members: ``(n, p)`` each pair's size-``s`` member.
        dealt: ``(n, r)`` its background rows (each row at most once per round).
        rounds: ``(n,)`` its dealing round.
        spread: ``(n, r, k)`` ``f(x_S, b) − f(x_S̄, b)`` on each of its rows.
        m: Background rows.
        partition: ``(m / r, r)`` the groups the rows were dealt in, whole (:func:`_balanced_rows`), if they were:
            each pair's rows are then one group, and the fits and the pick go by group.

    Returns:
        ``(n, k)`` controls.
    """
    n, k = len(members), spread.shape[2]
    U = 2 * members.astype(np.float32) - 1  # ±1
    half = rounds % 2
    out = np.empty((n, k))
    slopes = [
        _baseline_slopes(U[half == h], dealt[half == h], rounds[half == h] // 2, spread[half == h], m, partition)
        for h in (0, 1)
    ]
    for h in (0, 1):
        chosen = half == h
        gamma = slopes[1 - h]
        p = gamma.shape[1]
        u, rows = U[chosen], dealt[chosen]
        if partition is not None:
            # Each pair's rows are one group: the mean of their slopes is the group's, one product for all groups
            # (a tenth of the per-row product and pick below, for groups of 10).
            g = len(partition)
            centred = gamma[partition].mean(axis=1) - gamma.mean(axis=0)  # (groups, p, k)
            games = (u @ centred.transpose(1, 0, 2).reshape(p, g * k).astype(np.float32)).reshape(-1, g, k)
            group_of = np.empty(m, dtype=np.intp)
            group_of[partition] = np.arange(g)[:, None]
            out[chosen] = games[np.arange(len(u)), group_of[rows[:, 0]]]
            continue
        # Every pair against every row's slopes in one product, (n, m k), then each pair's own rows picked.
        centred = (gamma - gamma.mean(axis=0)).transpose(1, 0, 2).reshape(p, m * k).astype(np.float32)
        picked = np.empty((len(u), k))
        step = max(1, (1 << 21) // max(m * k, 1))
        for lo in range(0, len(u), step):
            games = (u[lo : lo + step] @ centred).reshape(-1, m, k)
            picked[lo : lo + step] = _middle_mean(np.take_along_axis(games, rows[lo : lo + step, :, None], axis=1))
        out[chosen] = picked
    return out


def _baseline_slopes(
    U: FloatArray, dealt: IndexArray, slot: IndexArray, spread: FloatArray, m: int, partition: IndexArray | None = None
) -> FloatArray:
    """``(m, p, k)`` least-squares slopes ``γ_b`` of ``spread ≈ uᵀγ_b`` for each background row ``b`` (a little ridge).

    A row serves at most one pair per round, so the pairs of row ``b`` line up by round (``slot``) in an
    ``(m, rounds, p)`` design, zero where a round left the row out; the per-row products are then two batched
    ones. ``U`` is ±1, so each ``UᵀU`` is a matrix of counts, exact in float32; a row dealt no pair gets 0.
    With ``partition`` (the pairs were dealt whole groups of rows, :func:`_balanced_rows`) the rows of a group
    share their design: one Gram matrix and one solve a group, the group's rows' targets its right-hand sides.
    """
    n, p, k = len(U), U.shape[1], spread.shape[2]
    width = int(slot.max()) + 1 if n else 1
    owner = np.full((m, width), n, dtype=np.intp)  # n: the zero row below
    owner[dealt, slot[:, None]] = np.arange(n)[:, None]
    padded = np.concatenate([U, np.zeros((1, p), dtype=np.float32)])
    targets = np.zeros((m, width, k), dtype=np.float32)
    targets[dealt, slot[:, None]] = spread
    diagonal = np.arange(p)
    slopes: FloatArray = np.empty((m, p, k))
    if partition is not None:
        g, r = partition.shape
        shared = owner[partition[:, 0]]  # every row of a group was dealt the same pairs in the same rounds
        designs = padded[shared]  # (groups, width, p)
        flipped = designs.transpose(0, 2, 1)
        grams = np.matmul(flipped, designs)
        grams[:, diagonal, diagonal] += BASELINE_RIDGE * np.maximum((shared < n).sum(axis=1), 1)[:, None]
        rhs = targets[partition].transpose(0, 2, 1, 3).reshape(g, width, r * k)  # (groups, width, rows k)
        slopes[partition] = _spd_solve(grams, np.matmul(flipped, rhs)).reshape(g, p, r, k).transpose(0, 2, 1, 3)
        return slopes
    step = max(1, BASELINE_CHUNK_VALUES // max(width * p, 1))
    for lo in range(0, m, step):
        rows = slice(lo, lo + step)
        designs = padded[owner[rows]]  # (rows, width, p)
        flipped = designs.transpose(0, 2, 1)
        grams = np.matmul(flipped, designs)
        grams[:, diagonal, diagonal] += BASELINE_RIDGE * np.maximum((owner[rows] < n).sum(axis=1), 1)[:, None]
        # float32 throughout: the ridge keeps these systems well conditioned, and a control needs no more digits.
        slopes[rows] = _spd_solve(grams, np.matmul(flipped, targets[rows]))
    return slopes


def _spd_solve(a: FloatArray, b: FloatArray) -> FloatArray:
    """``np.linalg.solve(a, b)`` for a stack of symmetric positive definite systems ``(n, p, p)``, ``(n, p, k)``.

    From :data:`POSV_PLAYERS` players, LAPACK's Cholesky solve (``?posv``) one system at a time, where numpy's
    batched solve is an LU per system with its own copies: 100 float32 systems, one BLAS thread, 1.2–1.4 against
    1.6 ms on 30 players, 4.9–5.6 against 10–12.6 ms on 100; below, the Python loop costs more than it saves. A
    system that is not positive definite in its precision after all falls back to the LU.
    """
    n, p = a.shape[0], a.shape[-1]
    if p < POSV_PLAYERS or n == 0:
        return np.asarray(np.linalg.solve(a, b))
    posv = get_lapack_funcs("posv", (a, b))
    out: FloatArray = np.empty(b.shape, dtype=np.result_type(a, b))
    for i in range(n):
        # a[i] is symmetric: its transpose is the same matrix in the column order LAPACK reads, without a copy.
        _, x, info = posv(a[i].T, b[i], lower=True)
        out[i] = x if info == 0 else np.linalg.solve(a[i], b[i])
    return out


def _weighted_gram(strata: list[tuple[list[BoolArray], float]], p: int) -> tuple[FloatArray, FloatArray]:
    """``Σ_h w_h Z_hᵀZ_h`` and ``Σ_h w_h Z_hᵀ1`` over the strata's 0/1 member matrices ``Z_h``.

    Each stratum's ``Z_hᵀZ_h`` counts coalitions, integers that float32 holds exactly below 2²⁴: one float32
    symmetric product per stratum, exact, at half float64's cost; the weights are applied in float64.
    """
    gram = np.zeros((p, p))
    sums = np.zeros(p)
    for drawn, weight in strata:
        Z = np.concatenate(drawn)
        Zf: FloatArray = Z.astype(np.float32 if len(Z) < 1 << 24 else np.float64)
        gram += weight * (Zf.T @ Zf).astype(np.float64)  # a Python float times float32 stays float32
        sums += weight * Z.sum(axis=0)
    return gram, sums


def _proportional(res_in: FloatArray, res_out: FloatArray, out: int) -> tuple[int, float] | None:
    """An earlier output whose residuals are ``c ×`` this one's, as ``(index, c)``, or ``None``."""
    a_in, a_out = res_in[:, out], res_out[:, out]
    for earlier in range(out):
        b_in, b_out = res_in[:, earlier], res_out[:, earlier]
        scale = float(b_in @ b_in + b_out @ b_out)
        if scale == 0:
            continue
        c = float(a_in @ b_in + a_out @ b_out) / scale
        # |a − c b| within TWIN_TOLERANCE of a's largest residual: p and 1 − p of a float32 model are a rounding
        # apart (9e-7 of the residuals on the 300-feature logistic regression of bench/kernel.py), and a
        # standard error needs no more digits than that.
        tol = TWIN_TOLERANCE * max(float(np.abs(a_in).max(initial=0)), float(np.abs(a_out).max(initial=0)))
        if np.abs(a_in - c * b_in).max(initial=0) <= tol and np.abs(a_out - c * b_out).max(initial=0) <= tol:
            return earlier, c
    return None


def _conv(tolerance: float | None, worst: float) -> bool | None:
    return None if tolerance is None else worst <= tolerance


def _pooled(
    spans: list[tuple[IndexArray, int, float]],
) -> list[tuple[IndexArray, int, float]]:
    """The sampled (not enumerated) strata, a stratum of one pair pooled with its neighbour (collapsed strata)."""
    sampled = [span for span in spans if span[1] < span[2]]
    out: list[tuple[IndexArray, int, float]] = []
    for ids, n_h, N_h in sampled:
        if out and (out[-1][1] < 2 or n_h < 2):
            last_ids, last_n, last_N = out.pop()
            ids, n_h, N_h = np.concatenate([last_ids, ids]), last_n + n_h, last_N + N_h
        out.append((ids, n_h, N_h))
    if len(out) > 1 and out[-1][1] < 2:
        ids, n_h, N_h = out.pop()
        last_ids, last_n, last_N = out.pop()
        out.append((np.concatenate([last_ids, ids]), last_n + n_h, last_N + N_h))
    return [span for span in out if span[1] >= 2]


def _joined(parts: list[FloatArray]) -> FloatArray:
    """``np.concatenate(parts)``, without its copy when there is one part (a single round's strata)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _inverse(a: FloatArray) -> FloatArray:
    """Inverse, or pseudo-inverse when the sample leaves a direction unseen."""
    try:
        return np.asarray(np.linalg.inv(a))
    except np.linalg.LinAlgError:
        return np.asarray(np.linalg.pinv(a))


def _sample_strata(rng: np.random.Generator, p: int, requests: list[tuple[_Stratum, int]]) -> list[BoolArray]:
    """:func:`_sample` of each ``(stratum, count)``: the strata drawn by rejection share each round of draws.

    A round of a 30-feature row asks a dozen large strata for a few pairs each; drawing them one by one cost a
    dozen numpy calls per stratum, more than onnxruntime spends on their coalitions. Masks of different sizes
    never coincide (and the middle size is named by its member holding player 0), so one ``unique`` and one
    ``isin`` over the round serve all of them; each stratum then keeps its first new draws, in draw order.
    """
    got: list[list[BoolArray]] = [[] for _ in requests]
    pending: list[tuple[int, _Stratum, int]] = []
    for i, (st, count) in enumerate(requests):
        left = st.units - len(st.seen)
        count = min(count, left)
        if st.units <= ENUMERATE_UNITS or count * 2 >= left:
            got[i].append(_sample(rng, p, st, count))
        else:
            pending.append((i, st, count))
    while pending:
        draws = np.array([max(8, int(want * 1.1) + 8) for _, _, want in pending], dtype=np.intp)
        sizes = np.repeat([st.size for _, st, _ in pending], draws)
        masks = _random_subsets(rng, len(sizes), p, sizes)
        halves = np.repeat([st.half for _, st, _ in pending], draws)
        flip = halves & ~masks[:, 0]
        masks[flip] ^= True  # the member holding player 0 names the pair
        keys = _keys(masks)
        first = np.sort(np.unique(keys, return_index=True)[1])  # first draw of each, in draw order
        seen = [st.seen for _, st, _ in pending if len(st.seen)]
        if seen:
            first = first[~np.isin(keys[first], np.concatenate(seen))]
        bounds = np.searchsorted(first, np.concatenate([[0], np.cumsum(draws)]))
        still: list[tuple[int, _Stratum, int]] = []
        for j, (i, st, want) in enumerate(pending):
            mine = first[bounds[j] : bounds[j + 1]][:want]
            st.seen = np.concatenate([st.seen, keys[mine]]) if len(st.seen) else keys[mine]
            got[i].append(masks[mine])
            if len(mine) < want:
                still.append((i, st, want - len(mine)))
        pending = still
    return [np.concatenate(parts) if parts else np.zeros((0, p), dtype=bool) for parts in got]


def _sample(rng: np.random.Generator, p: int, stratum: _Stratum, count: int) -> BoolArray:
    """Draw ``count`` new pairs of ``stratum`` uniformly without replacement from its listing; their size-``s`` members.

    For strata small enough to list (:data:`ENUMERATE_UNITS`), or asked for half of what is left of them, where
    rejection would mostly redraw pairs already seen; :func:`_sample_strata` draws the rest by rejection.
    """
    s = stratum.size
    count = min(count, stratum.units - len(stratum.seen))
    listed = _listed_units if stratum.units <= ENUMERATE_UNITS else _all_units
    every, keys = listed(p, s, stratum.half)
    fresh = np.flatnonzero(~np.isin(keys, stratum.seen)) if len(stratum.seen) else np.arange(len(every))
    pick = rng.choice(fresh, size=count, replace=False)
    stratum.seen = np.concatenate([stratum.seen, keys[pick]]) if len(stratum.seen) else keys[pick]
    chosen: BoolArray = every[pick]
    return chosen


def _random_subsets(rng: np.random.Generator, n: int, p: int, s: int | IndexArray) -> BoolArray:
    """``n`` uniform random ``s``-subsets of ``p`` players as masks: the ``s`` smallest of ``p`` uniform keys.

    ``s`` is one size, or one per subset. float32 keys cut at their ``s``-th smallest (for one size a partition
    without indices: 2× faster than ``argpartition`` at 300 players; for sizes per subset, a sort of each row); a
    row whose cut falls in a tie (about ``p²/2²⁵`` of them) is drawn again with float64 keys and
    ``argpartition``. Both are uniform over the subsets, and so is the redraw of a tied row.
    """
    keys = rng.random((n, p), dtype=np.float32)
    if isinstance(s, int):
        masks: BoolArray = keys <= np.partition(keys, s - 1, axis=1)[:, s - 1 : s]
        wanted = np.full(n, s)
    else:
        wanted = np.asarray(s, dtype=np.intp)
        # One sort of every row: 0.4–0.8× the time of a partition per size (150 sizes of 300 players, 15 of 30).
        masks = keys <= np.sort(keys, axis=1)[np.arange(n), wanted - 1][:, None]
    tied = np.flatnonzero(masks.sum(axis=1) != wanted)
    for t in tied:
        size = int(wanted[t])
        row = np.zeros(p, dtype=bool)
        row[np.argpartition(rng.random(p), size - 1)[:size]] = True
        masks[t] = row
    return masks


def _all_units(p: int, s: int, half: bool) -> tuple[BoolArray, Keys]:
    """Every pair of a stratum as its size-``s`` member (the one holding player 0 for the middle size), and keys."""
    if half:
        combos = [(0, *rest) for rest in combinations(range(1, p), s - 1)]
    else:
        combos = list(combinations(range(p), s))
    masks = np.zeros((len(combos), p), dtype=bool)
    if combos:
        idx = np.array(combos, dtype=np.intp)
        np.put_along_axis(masks, idx, True, axis=1)
    return masks, _keys(masks)


@functools.lru_cache(maxsize=8)
def _listed_units(p: int, s: int, half: bool) -> tuple[BoolArray, Keys]:
    """:func:`_all_units` of a stratum of at most :data:`ENUMERATE_UNITS` pairs, kept (read-only) per ``(p, s)``.

    Listing them took 1 ms for the 4,060 triples of 30 players, on every row and every tolerance round that draws
    from the stratum: as much as onnxruntime's time for that row's coalitions. An entry holds at most
    ``ENUMERATE_UNITS × p`` booleans with ``p ≤ 200`` (pairs of 200 players), or ``p²`` (single players), so
    4 MB unless ``p`` passes 2,000.
    """
    masks, keys = _all_units(p, s, half)
    masks.flags.writeable = False
    keys.flags.writeable = False
    return masks, keys


def _keys(masks: BoolArray) -> Keys:
    """One comparable key per mask: its packed bits, as one ``uint64`` up to 64 players, else opaque bytes.

    Only equality matters (``unique``, ``isin``); numpy sorts and compares the integers in less than half the
    time of the bytes (11,000 masks of 30 players: 0.8 against 1.9 ms a ``unique``, as much an ``isin``, each
    round of a row's draws).
    """
    packed = np.ascontiguousarray(np.packbits(masks, axis=1))
    width = packed.shape[1]
    if width <= 8:
        whole = np.zeros((len(packed), 8), dtype=np.uint8)
        whole[:, :width] = packed
        return whole.view(np.uint64).ravel()
    keys: Keys = packed.view(np.dtype((np.void, width))).ravel()
    return keys


def _balanced_rows(
    rng: np.random.Generator, pairs: int, m: int, r: int, partition: IndexArray | None = None
) -> IndexArray:
    """``(pairs, r)`` background rows: chunks of shuffled rounds of all ``m``, so each row serves equally often.

    With ``partition`` (``(m / r, r)`` groups of rows), a round deals each group whole, in shuffled order.
    """
    per_round = m // r
    rounds = -(-pairs // per_round)
    if partition is not None:
        order = np.argsort(rng.random((rounds, per_round)), axis=1)
        return partition[order].reshape(rounds * per_round, r)[:pairs]
    order = np.argsort(rng.random((rounds, m)), axis=1)[:, : per_round * r]
    return order.reshape(rounds * per_round, r)[:pairs].astype(np.intp)


def _middle_mean(values: FloatArray) -> FloatArray:
    """``values.mean(axis=1)`` of ``(n, r, k)`` values, as one product with an averaging matrix.

    numpy reduces a middle axis with a strided loop per output: 30× slower than this BLAS product for
    ``k = 2`` outputs, and the mean of every coalition's rows is taken once per model call.
    """
    n, r, k = values.shape
    averaging = np.tile(np.eye(k, dtype=values.dtype), (r, 1)) / r
    means: FloatArray = np.ascontiguousarray(values).reshape(n, r * k) @ averaging
    return means


def _row_means(background: FloatArray, picked: IndexArray) -> FloatArray:
    """``background[picked].mean(axis=1)``: the mean of each pair's ``r`` dealt rows, ``(n, d)``.

    As counts times the background (one BLAS product) instead of gathering ``n × r × d`` values first: 6× faster
    at 10,000 pairs of 10 rows on 300 features.
    """
    n, r = picked.shape
    m = len(background)
    means: FloatArray = np.empty((n, background.shape[1]))
    step = max(1, (1 << 21) // m)  # count matrices of at most 2M cells (16 MB)
    for lo in range(0, n, step):
        part = picked[lo : lo + step]
        cells = (np.arange(len(part))[:, None] * m + part).ravel()
        counts = np.bincount(cells, minlength=len(part) * m).reshape(len(part), m)
        np.matmul(counts, background, out=means[lo : lo + len(part)])
    means /= r
    return means


def _fit_linear(rows: FloatArray, y: FloatArray) -> FloatArray:
    """Least-squares slopes ``(d, k)`` of ``y`` on ``rows`` (with an intercept, a little ridge)."""
    centred = rows - rows.mean(axis=0)
    target = y - y.mean(axis=0)
    gram = centred.T @ centred
    gram.flat[:: len(gram) + 1] += 1e-6 * (np.trace(gram) / max(len(gram), 1) + 1e-12)  # the diagonal
    slopes: FloatArray = np.linalg.solve(gram, centred.T @ target)
    return slopes
