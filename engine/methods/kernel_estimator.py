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

Standard error: the solve is a smooth function of the stratum totals of
``A`` and ``b``; linearising it gives each sampled pair ``j`` an influence
``G Σ_{rows of j} ω z (v − zᵀφ)`` with ``G = A⁻¹ − A⁻¹11ᵀA⁻¹ / 1ᵀA⁻¹1``
(the constraint's projection). Its variance under stratified sampling
without replacement is ``Σ_h n_h (1 − n_h/N_h) s²_h`` (``s²_h`` the sample
variance of the influences in stratum ``h``), 0 for enumerated strata; strata
holding a single pair are pooled with a neighbour. The result is widened by
``t_{0.975, dof} / z_{0.975}`` (``dof = Σ (n_h − 1)``), so ``±1.96 std_error``
reads as a 95 % interval. This is the linearised (infinitesimal) jackknife
of the stratified design.

``tolerance`` mode samples in rounds (the first a sixteenth of the budget,
then doubling) until every ``std_error`` is below the tolerance or the
budget is spent; later rounds extend each stratum's sample without
replacement, so the final sample is one stratified design.

All coalitions of a round, for every row explained, are evaluated together
(``len(coalitions) × len(background)`` model rows) in as few calls of ``f`` as
:data:`MAX_BATCH_VALUES` allows. Framework-free: numpy and ``engine.errors``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Literal

import numpy as np
import numpy.typing as npt

from engine.errors import InvalidRequest

__all__ = [
    "KernelEstimate",
    "KernelEstimator",
    "MAX_BATCH_VALUES",
    "Sampling",
    "allocate",
    "t_widening",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
ModelFn = Callable[[FloatArray], FloatArray]
Sampling = Literal["leverage", "kernel"]

MAX_BATCH_VALUES = 1 << 24
"""Feature values per ``f`` call (128 MiB as float64): bounds memory, keeps onnxruntime busy."""

ENUMERATE_UNITS = 20_000
"""Strata with at most this many pairs are listed and sampled by index; larger ones by rejection."""

FIRST_ROUND_SHARE = 16
"""``tolerance`` mode: the first round spends ``budget / FIRST_ROUND_SHARE`` coalitions."""


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
        complete: Every coalition was evaluated, so ``values`` are exact.
        rounds: Sampling rounds run (1 without ``tolerance``).
        converged: ``tolerance`` mode: every std_error fell below it; else ``None``.
        dof: Degrees of freedom of the error estimate (0 when complete).
    """

    values: FloatArray
    std_errors: FloatArray
    base_value: FloatArray
    output_value: FloatArray
    coalitions: int
    complete: bool
    rounds: int = 1
    converged: bool | None = None
    dof: int = 0

    @property
    def evaluations(self) -> int:
        """Coalitions evaluated, counting the full one (``f(x)``); each costs one pass over the background."""
        return self.coalitions + 1


@dataclass
class _Stratum:
    """The pairs ``{S, S̄}`` with ``|S| = size ≤ p/2`` and what has been drawn of them."""

    size: int
    units: int
    mass: float
    half: bool
    drawn: list[BoolArray] = field(default_factory=list)
    inside: list[FloatArray] = field(default_factory=list)
    outside: list[FloatArray] = field(default_factory=list)
    keys: set[bytes] = field(default_factory=set)

    @property
    def count(self) -> int:
        return sum(len(d) for d in self.drawn)


@dataclass
class _Row:
    """One row's state across rounds."""

    x: FloatArray
    players: npt.NDArray[np.intp]
    rng: np.random.Generator
    strata: list[_Stratum]
    fx: FloatArray
    layout: list[tuple[_Stratum, int]] = field(default_factory=list)
    estimate: KernelEstimate | None = None


def allocate(units: Sequence[int], masses: Sequence[float], total: int, current: Sequence[int] = ()) -> list[int]:
    """Spread ``total`` pairs over strata in proportion to ``masses``, never beyond a stratum's ``units``.

    Water-filling: a stratum whose share covers all its pairs is taken whole
    and the rest is re-spread over the others; shares are rounded by largest
    remainder. Never below ``current`` (what earlier rounds drew).

    Args:
        units: Pairs in each stratum.
        masses: Sampling mass of each stratum (any positive scale).
        total: Pairs to allocate in all.
        current: Pairs already drawn per stratum.

    Returns:
        The number of pairs each stratum should hold.
    """
    n = len(units)
    have = list(current) or [0] * n
    target = [0] * n
    full = [False] * n
    left = total
    while True:
        open_ = [h for h in range(n) if not full[h]]
        mass = sum(masses[h] for h in open_)
        if not open_ or left <= 0 or mass <= 0:
            break
        grown = [h for h in open_ if left * masses[h] / mass >= units[h]]
        if not grown:
            break
        for h in grown:
            full[h], target[h] = True, units[h]
            left -= units[h]
    open_ = [h for h in range(n) if not full[h]]
    mass = sum(masses[h] for h in open_)
    if open_ and left > 0 and mass > 0:
        shares = [left * masses[h] / mass for h in open_]
        floors = [min(int(s), units[h]) for s, h in zip(shares, open_, strict=True)]
        spare = left - sum(floors)
        order = sorted(range(len(open_)), key=lambda i: floors[i] - shares[i])
        for i in order:
            if spare <= 0:
                break
            if floors[i] < units[open_[i]]:
                floors[i] += 1
                spare -= 1
        for h, c in zip(open_, floors, strict=True):
            target[h] = c
    return [max(t, c) for t, c in zip(target, have, strict=True)]


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
        max_batch_rows: At most this many model rows per ``f`` call (besides
            :data:`MAX_BATCH_VALUES`).

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
        max_batch_rows: int = 1 << 20,
    ) -> None:
        self.f = f
        self.background = np.asarray(background, dtype=np.float64)
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
        self.rows_per_call = max(len(self.background), min(max_batch_rows, MAX_BATCH_VALUES // max(d, 1)))
        self.base_value = np.asarray(self.f(self.background), dtype=np.float64).mean(axis=0)

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
            budget: Coalitions per row (besides the empty and full ones); at
                least ``2 × players`` unless it covers every coalition.
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
        for row in rows:
            p = len(row.players)
            complete = p < 2 or budget >= 2**p - 2
            if not complete and budget < 2 * p:
                raise InvalidRequest(
                    f"a budget of {budget} coalitions is below 2 × {p} varying features; Kernel SHAP's "
                    f"regression needs at least {2 * p}; raise nsamples",
                    code="invalid_parameter",
                    field="parameters.nsamples",
                )
        first = budget if tolerance is None else max(budget // FIRST_ROUND_SHARE, 0)
        spend = {id(row): min(budget, max(first, 2 * len(row.players))) for row in rows}
        active = rows
        rounds = 0
        while active:
            rounds += 1
            fresh = [(row, self._draw(row, spend[id(row)])) for row in active]
            self._evaluate(fresh)
            still: list[_Row] = []
            for row, _ in fresh:
                row.estimate = self._solve(row, rounds, tolerance)
                drawn = row.estimate.coalitions
                if (
                    tolerance is not None
                    and not row.estimate.converged
                    and not row.estimate.complete
                    and drawn < budget
                ):
                    spend[id(row)] = min(budget, 2 * drawn)
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

    def _draw(self, row: _Row, coalitions: int) -> BoolArray:
        """Extend the row's sample to about ``coalitions`` coalitions; return the new ``(c, p)`` masks."""
        strata = row.strata
        have = [st.count for st in strata]
        target = allocate([st.units for st in strata], [st.mass for st in strata], coalitions // 2, have)
        new: list[BoolArray] = []
        row.layout = []
        for st, want, got in zip(strata, target, have, strict=True):
            if want > got:
                pairs = _sample(row.rng, len(row.players), st, want - got)
                st.drawn.append(pairs)
                row.layout.append((st, len(pairs)))
                new += [pairs, ~pairs]
        p = len(row.players)
        return np.concatenate(new) if new else np.zeros((0, p), dtype=bool)

    # ------------------------------------------------------------------ evaluation

    def _evaluate(self, batch: list[tuple[_Row, BoolArray]]) -> None:
        """Compute ``v(S)`` for every new coalition of every row, in few large ``f`` calls."""
        m, d = self.background.shape
        per_call = max(1, self.rows_per_call // m)
        jobs: list[tuple[_Row, int, int]] = []  # row, first coalition, count — in call order
        for row, masks in batch:
            for start in range(0, len(masks), per_call):
                jobs.append((row, start, min(per_call, len(masks) - start)))
        results: dict[int, list[FloatArray]] = {id(row): [] for row, _ in batch}
        masks_of = {id(row): masks for row, masks in batch}
        i = 0
        while i < len(jobs):
            chunk: list[tuple[_Row, int, int]] = []
            size = 0
            while i < len(jobs) and (not chunk or size + jobs[i][2] <= per_call):
                chunk.append(jobs[i])
                size += jobs[i][2]
                i += 1
            buffer = np.empty((size, m, d))
            offset = 0
            for row, start, count in chunk:
                columns = np.zeros((count, self.players), dtype=bool)
                columns[:, row.players] = masks_of[id(row)][start : start + count]
                block = buffer[offset : offset + count]
                np.copyto(block, self.background[None, :, :])
                np.copyto(block, row.x, where=columns[:, self.column_player][:, None, :])
                offset += count
            y = np.asarray(self.f(buffer.reshape(-1, d)), dtype=np.float64)
            y = y.reshape(size, m, -1).mean(axis=1)
            offset = 0
            for row, _, count in chunk:
                results[id(row)].append(y[offset : offset + count])
                offset += count
        for row, _ in batch:
            if not results[id(row)]:
                continue
            values = np.concatenate(results[id(row)])
            offset = 0
            for st, n in row.layout:
                st.inside.append(values[offset : offset + n])
                st.outside.append(values[offset + n : offset + 2 * n])
                offset += 2 * n

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
            return KernelEstimate(values, errors, self.base_value, row.fx, 0, True, rounds, _conv(tolerance, 0.0))
        # One row per sampled pair: its size-s member Z1 (the complement is 1 − Z1), both members' values.
        members: list[BoolArray] = []
        inside: list[FloatArray] = []
        outside: list[FloatArray] = []
        weights: list[FloatArray] = []
        spans: list[tuple[npt.NDArray[np.intp], int, int]] = []  # pair indices, n_h, N_h per stratum
        units = 0
        for st in row.strata:
            if not st.drawn:
                continue
            n_h = st.count
            # Horvitz–Thompson: the size's kernel mass (p − 1)/(s (p − s)) over the coalitions drawn of it.
            weight = (p - 1) / (st.size * (p - st.size)) / (n_h * (2 if st.half else 1))
            members += st.drawn
            inside += st.inside
            outside += st.outside
            weights.append(np.full(n_h, weight))
            spans.append((units + np.arange(n_h, dtype=np.intp), n_h, st.units))
            units += n_h
        Z1 = np.concatenate(members).astype(np.float64)
        Z = np.concatenate([Z1, 1.0 - Z1])
        y = np.concatenate([np.concatenate(inside), np.concatenate(outside)]) - self.base_value
        w = np.tile(np.concatenate(weights), 2)
        A_inv = _inverse(Z.T @ (w[:, None] * Z))
        c = A_inv.sum(axis=1)  # A⁻¹ 1
        phi = A_inv @ (Z.T @ (w[:, None] * y))
        phi -= np.outer(c, (phi.sum(axis=0) - delta) / c.sum())  # the Lagrange step onto Σ φ = Δ
        values[row.players] = phi
        coalitions = len(Z)
        if all(st.count == st.units for st in row.strata):
            return KernelEstimate(
                values, errors, self.base_value, row.fx, coalitions, True, rounds, _conv(tolerance, 0.0)
            )
        # Pair j's share of Σ ω z (y − zᵀφ) is t_j = a_j z_j + b_j (1 − z_j); φ moves by G t_j.
        G = A_inv - np.outer(c, c) / c.sum()
        residual = (y - Z @ phi) * w[:, None]
        groups = _pooled(spans)
        dof = sum(n_h - 1 for _, n_h, _ in groups)
        se = np.zeros((p, k))
        for out in range(k):
            a, b_ = residual[:units, out], residual[units:, out]
            T = a[:, None] * Z1 + b_[:, None] * (1.0 - Z1)
            scaled = []
            for ids, n_h, N_h in groups:
                part = T[ids] - T[ids].mean(axis=0)
                scaled.append(part * math.sqrt(n_h * (1 - n_h / N_h) / (n_h - 1)))
            if scaled:
                U = np.concatenate(scaled) @ G  # G symmetric: rows are (G t_j)ᵀ, centred and scaled
                se[:, out] = np.sqrt(np.einsum("ij,ij->j", U, U))
        se *= t_widening(dof)
        errors[row.players] = se
        return KernelEstimate(
            values, errors, self.base_value, row.fx, coalitions, False, rounds, _conv(tolerance, float(se.max())), dof
        )


def _conv(tolerance: float | None, worst: float) -> bool | None:
    return None if tolerance is None else worst <= tolerance


def _pooled(
    spans: list[tuple[npt.NDArray[np.intp], int, int]],
) -> list[tuple[npt.NDArray[np.intp], int, int]]:
    """The sampled (not enumerated) strata, a stratum of one pair pooled with its neighbour (collapsed strata)."""
    sampled = [span for span in spans if span[1] < span[2]]
    out: list[tuple[npt.NDArray[np.intp], int, int]] = []
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


def _inverse(a: FloatArray) -> FloatArray:
    """Inverse, or pseudo-inverse when the sample leaves a direction unseen."""
    try:
        return np.asarray(np.linalg.inv(a))
    except np.linalg.LinAlgError:
        return np.asarray(np.linalg.pinv(a))


def _sample(rng: np.random.Generator, p: int, stratum: _Stratum, count: int) -> BoolArray:
    """Draw ``count`` new pairs of ``stratum`` uniformly without replacement; return their size-``s`` members."""
    s = stratum.size
    left = stratum.units - len(stratum.keys)
    count = min(count, left)
    if stratum.units <= ENUMERATE_UNITS or count * 2 >= left:
        every = _all_units(p, stratum)
        keys = _keys(every)
        fresh = np.array([key not in stratum.keys for key in keys], dtype=bool)
        pick = rng.choice(np.flatnonzero(fresh), size=count, replace=False)
        stratum.keys.update(keys[i] for i in pick)
        chosen: BoolArray = every[pick]
        return chosen
    out: list[BoolArray] = []
    got = 0
    while got < count:
        want = count - got
        draws = max(8, int(want * 1.1) + 8)
        idx = np.argpartition(rng.random((draws, p)), s - 1, axis=1)[:, :s]
        masks = np.zeros((draws, p), dtype=bool)
        np.put_along_axis(masks, idx, True, axis=1)
        if stratum.half:
            masks[~masks[:, 0]] ^= True  # the member holding player 0 names the pair
        for mask, key in zip(masks, _keys(masks), strict=True):
            if key in stratum.keys:
                continue
            stratum.keys.add(key)
            out.append(mask)
            got += 1
            if got == count:
                break
    return np.array(out, dtype=bool).reshape(-1, p)


def _all_units(p: int, stratum: _Stratum) -> BoolArray:
    """Every pair of the stratum as its size-``s`` member (the one holding player 0 for the middle size)."""
    s = stratum.size
    if stratum.half:
        combos = [(0, *rest) for rest in combinations(range(1, p), s - 1)]
    else:
        combos = list(combinations(range(p), s))
    masks = np.zeros((len(combos), p), dtype=bool)
    if combos:
        idx = np.array(combos, dtype=np.intp)
        np.put_along_axis(masks, idx, True, axis=1)
    return masks


def _keys(masks: BoolArray) -> list[bytes]:
    packed = np.packbits(masks, axis=1)
    return [r.tobytes() for r in packed]
