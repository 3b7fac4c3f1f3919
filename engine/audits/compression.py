"""The compression study of an audit: every row explained on fp32 and on each ready variant, then compared.

An audit spec with ``"variants": ["int8_static", "prune_structured"]`` makes each chunk explain its rows once more
on every variant, with the fp32 plan's method, parameters and seed and for the class fp32 explained, so the two
attributions of a row answer the same question. The merge compares them row by row: prediction agreement, the
Spearman rank correlation of |attribution| (as :mod:`engine.variants.fidelity` measures drift, here over every
row), top-k overlap, the shift of global importance per feature, the rows whose explanation changed most, and
fairness recomputed on the variant's predictions. A variant is ``drift_flagged`` when its median rank correlation
is below ``variant_min_drift_spearman``.

Files, beside the audit's own (see :mod:`engine.audits.store`)::

    <id>/variants/<kind>/chunks/<start>.parquet   one chunk's rows explained on the variant (written before the
                                                  fp32 chunk file, whose presence marks the chunk done)
    <id>/variants/<kind>/rows.parquet             the variant's per-row table, plus ``fp32_prediction``,
                                                  ``spearman`` and ``top_k_overlap``

Example::

    summary["compression"] = compare_variants(audit, rows, summary)            # at the merge
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.audits.fairness import FairnessThresholds, as_labels, fairness
from engine.audits.store import Audit
from engine.audits.study import rows_path, variant_dir
from engine.audits.summary import _clean
from engine.errors import InvalidRequest
from engine.explain.plan import ExplainRequest
from engine.explain.result import Explanation
from engine.explain.run import run_explanation
from engine.files import atomic_path
from engine.models.store import ModelRegistry
from engine.serving import Predictor

CHANGED_ROWS = 10
"""Rows listed per variant whose explanation changed most."""
_TIE = 1e-9
_BINS = np.linspace(-1.0, 1.0, 21)
_QUANTILES = {"p05": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95}
_Array = np.ndarray[Any, Any]
_Dict = dict[str, Any]
Table = Callable[[Explanation, pd.DataFrame, int], pd.DataFrame]
"""Builds a chunk's per-row table from an explanation, its dataset rows and its first row number."""


def explain_variants(
    audit: Audit,
    rows: list[list[float]],
    frame: pd.DataFrame,
    first: int,
    reference: Explanation,
    registry: ModelRegistry,
    predictor: Predictor,
    table: Table,
    *,
    should_stop: Callable[[], bool],
) -> dict[str, pd.DataFrame]:
    """Explain one slice of rows on every variant of the study, for the classes fp32 explained.

    Args:
        audit: The stored audit (its spec holds the study).
        rows: The slice's rows (raw feature space).
        frame: Their dataset rows.
        first: The position of the slice's first row.
        reference: The slice's fp32 explanation.
        registry: The model store.
        predictor: Warm sessions of this process.
        table: Builds the per-row table of an explanation.
        should_stop: Polled between model evaluations.

    Returns:
        Per variant kind, the slice's per-row table (empty without a study).
    """
    spec = audit.spec
    study = spec.compression
    if not study:
        return {}
    fixed = spec.task == "regression" or bool(spec.request.get("targets"))
    targets = np.asarray([reference.target_of(i) for i in range(len(rows))], dtype=np.intp)
    names = reference.model.card.output_names
    out = {}
    for kind in study["variants"]:
        plan = {**spec.request, "variant": kind}
        # Same rows in the same call when every row explains the same output: a seeded method draws alike.
        groups = (
            [(None, np.arange(len(rows)))] if fixed else [(c, np.flatnonzero(targets == c)) for c in np.unique(targets)]
        )
        parts = []
        for target, idx in groups:
            request = {**plan, "targets": plan["targets"] if target is None else [names[int(target)]]}
            result = run_explanation(
                ExplainRequest.from_payload({**request, "rows": [rows[i] for i in idx]}),
                registry,
                predictor,
                should_stop=should_stop,
            )
            if not isinstance(result, Explanation):
                raise InvalidRequest("audits explain tabular models only", code="method_not_applicable", field="model")
            part = table(result, frame.iloc[idx], 0)
            parts.append(part.assign(row=first + idx))
        out[kind] = pd.concat(parts, ignore_index=True).sort_values("row", kind="stable", ignore_index=True)
    return out


def write_variant_chunks(audit: Audit, start: int, tables: Mapping[str, pd.DataFrame]) -> None:
    """Store one chunk's per-row tables of every variant (a retried chunk replaces them)."""
    for kind, rows in tables.items():
        directory = variant_dir(audit.path, kind) / "chunks"
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / f"{start}.parquet") as tmp:
            rows.to_parquet(tmp, index=False)


def compare_variants(audit: Audit, rows: pd.DataFrame, summary: Mapping[str, Any]) -> _Dict | None:
    """Merge each variant's chunks, store its per-row table and compare it with fp32.

    Args:
        audit: The stored audit.
        rows: The merged fp32 rows that were explained (``status`` ok), numbered as in the upload.
        summary: The fp32 summary (positive class and fairness).

    Returns:
        ``None`` without a study, else ``{"reference": "fp32", "top_k", "min_spearman", "variants": [...]}``;
        see ``openapi.yaml``'s ``CompressionStudy``.
    """
    spec = audit.spec
    study = spec.compression
    if not study:
        return None
    features, k = spec.features, int(study["top_k"])
    numbers = audit.read_dataset()["row"].to_numpy()
    reference = rows.set_index("row", drop=False)
    variants = []
    for kind in study["variants"]:
        chunks = [_read(variant_dir(audit.path, kind) / "chunks" / f"{start}.parquet") for start, _ in audit.chunks]
        chunks = [c for c in chunks if c is not None and len(c)]
        if not chunks:  # a chunk writes its variants' files before its own: only an audit of old code lacks them
            continue
        merged = pd.concat(chunks, ignore_index=True)
        merged["row"] = numbers[merged["row"].to_numpy(dtype=np.int64)]
        merged = (
            merged[merged["row"].isin(reference.index)].drop_duplicates("row").sort_values("row", ignore_index=True)
        )
        ref = reference.loc[merged["row"].to_numpy()].reset_index(drop=True)
        a = ref[[f"attr.{f}" for f in features]].to_numpy(dtype=np.float64)
        b = merged[[f"attr.{f}" for f in features]].to_numpy(dtype=np.float64)
        merged["fp32_prediction"] = ref["prediction"].to_numpy()
        merged["spearman"] = rank_correlation(a, b)
        merged["top_k_overlap"] = top_k_overlap(a, b, k)
        with atomic_path(rows_path(audit.path, kind)) as tmp:
            merged.to_parquet(tmp, index=False)
        variants.append(_compare(kind, ref, merged, a, b, audit, summary) | {"build": study["built"].get(kind)})
    found: _Dict = _clean(
        {"reference": "fp32", "top_k": k, "min_spearman": study["min_spearman"], "variants": variants}
    )
    return found


def _read(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.exists() else None


def rank_correlation(a: _Array, b: _Array) -> _Array:
    """Per row, the Spearman correlation of ``|a|`` and ``|b|`` (average ranks for ties).

    A constant row has no Spearman correlation: 1 when both rows are constant, else 0, as the variant build's drift.
    Vectorised (Pearson correlation of ranks), so a million rows take seconds, not minutes of per-row scipy calls.
    """
    from scipy.stats import rankdata

    x, y = np.abs(a), np.abs(b)
    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx, ry = rx - rx.mean(axis=1, keepdims=True), ry - ry.mean(axis=1, keepdims=True)
    denominator = np.sqrt((rx**2).sum(axis=1) * (ry**2).sum(axis=1))
    flat_x, flat_y = np.ptp(x, axis=1) == 0, np.ptp(y, axis=1) == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rx * ry).sum(axis=1) / denominator
    rho = np.where(flat_x | flat_y, np.where(flat_x & flat_y, 1.0, 0.0), rho)
    return np.clip(rho, -1.0, 1.0)


def top_k_overlap(a: _Array, b: _Array, k: int) -> _Array:
    """Per row, the fraction of the ``k`` largest ``|a|`` features that are among the ``k`` largest ``|b|``."""
    n, d = a.shape
    k = min(k, d)
    top = np.zeros((2, n, d), dtype=bool)
    for side, values in enumerate((a, b)):
        order = np.argsort(-np.abs(values), axis=1, kind="stable")[:, :k]
        np.put_along_axis(top[side], order, True, axis=1)
    overlap: _Array = (top[0] & top[1]).sum(axis=1) / k
    return overlap


def _compare(
    kind: str,
    ref: pd.DataFrame,
    var: pd.DataFrame,
    a: _Array,
    b: _Array,
    audit: Audit,
    summary: Mapping[str, Any],
) -> _Dict:
    spec, study = audit.spec, audit.spec.compression or {}
    rho, overlap = var["spearman"].to_numpy(), var["top_k_overlap"].to_numpy()
    median = float(np.median(rho)) if len(rho) else float("nan")
    k = int(study["top_k"])
    shares = np.rint(overlap * k).astype(int)
    return {
        "variant": kind,
        "rows": len(var),
        "agreement": _agreement(ref, var, spec.task),
        "rank_correlation": _describe(rho) | {"histogram": _histogram(rho)},
        "top_k_overlap": {
            "mean": float(overlap.mean()) if len(overlap) else None,
            "median": float(np.median(overlap)) if len(overlap) else None,
            "min": float(overlap.min()) if len(overlap) else None,
            "rows_sharing": {str(s): int((shares == s).sum()) for s in range(k + 1)},
        },
        # Ranks of d features give correlations on a grid (multiples of 0.1 for 5): a median on the threshold
        # meets it, whatever the last bit of its floating-point sum says.
        "drift_flagged": bool(median < float(study["min_spearman"]) - _TIE),
        "importance_shift": _importance_shift(a, b, spec.features),
        "changed_rows": _changed_rows(ref, var, a, b, spec.features),
        **_fairness(var, spec.task, spec.features, spec.sensitive, spec.thresholds, summary),
    }


def _agreement(ref: pd.DataFrame, var: pd.DataFrame, task: str) -> _Dict:
    if task != "regression":
        same = as_labels(ref["prediction"]).to_numpy() == as_labels(var["prediction"]).to_numpy()
        return {"prediction": float(same.mean()) if len(same) else None, "changed_rows": int((~same).sum())}
    x, y = ref["prediction"].to_numpy(dtype=np.float64), var["prediction"].to_numpy(dtype=np.float64)
    diff, spread = np.abs(x - y), float(np.ptp(x)) if len(x) else 0.0
    return {
        "mean_abs_difference": float(diff.mean()),
        "max_abs_difference": float(diff.max()),
        "normalised_max_difference": float(diff.max()) / (spread or 1.0),
    }


def _describe(x: _Array) -> _Dict:
    if not len(x):
        return {"mean": None, "median": None, "std": None, "min": None, "max": None, "quantiles": {}}
    return {
        "mean": float(x.mean()),
        "median": float(np.median(x)),
        "std": float(x.std()),
        "min": float(x.min()),
        "max": float(x.max()),
        "quantiles": {name: float(np.quantile(x, q)) for name, q in _QUANTILES.items()},
    }


def _histogram(x: _Array) -> _Dict:
    counts, edges = np.histogram(x, bins=_BINS)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def _importance_shift(a: _Array, b: _Array, features: list[str]) -> list[_Dict]:
    """Per feature, mean |attribution| on fp32 and on the variant, their difference and ranks; largest shift first."""
    before, after = np.abs(a).mean(axis=0), np.abs(b).mean(axis=0)
    rank_before = np.argsort(np.argsort(-before, kind="stable"), kind="stable") + 1
    rank_after = np.argsort(np.argsort(-after, kind="stable"), kind="stable") + 1
    out = [
        {
            "feature": name,
            "fp32_mean_abs": float(before[j]),
            "variant_mean_abs": float(after[j]),
            "shift": float(after[j] - before[j]),
            "relative_shift": float((after[j] - before[j]) / before[j]) if before[j] else None,
            "fp32_rank": int(rank_before[j]),
            "variant_rank": int(rank_after[j]),
        }
        for j, name in enumerate(features)
    ]
    return sorted(out, key=lambda item: -abs(item["shift"]))


def _changed_rows(ref: pd.DataFrame, var: pd.DataFrame, a: _Array, b: _Array, features: list[str]) -> list[_Dict]:
    """The rows of lowest rank correlation (ties: the largest L1 change of attributions), both explanations."""
    rho, distance = var["spearman"].to_numpy(), np.abs(a - b).sum(axis=1)
    out = []
    for i in np.lexsort((-distance, rho))[:CHANGED_ROWS]:
        out.append(
            {
                "row": int(var["row"].iloc[i]),
                "fp32_prediction": _plain(ref["prediction"].iloc[i]),
                "prediction": _plain(var["prediction"].iloc[i]),
                "spearman": float(rho[i]),
                "top_k_overlap": float(var["top_k_overlap"].iloc[i]),
                "attribution_change": float(distance[i]),
                "features": [
                    {
                        "feature": name,
                        "value": _plain(var[f"value.{name}"].iloc[i]),
                        "fp32": float(a[i, j]),
                        "variant": float(b[i, j]),
                    }
                    for j, name in enumerate(features)
                ],
            }
        )
    return out


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _fairness(
    var: pd.DataFrame,
    task: str,
    features: list[str],
    sensitive: list[str],
    thresholds: Mapping[str, float],
    summary: Mapping[str, Any],
) -> _Dict:
    """Fairness on the variant's predictions, and the change of each parity metric from fp32's."""
    classification = task != "regression"
    labels = var["label"] if "label" in var.columns else pd.Series(None, index=var.index, dtype=object)
    limits = FairnessThresholds(**thresholds) if classification else None
    found = fairness(var, labels, labels.notna().to_numpy(bool), features, sensitive, summary.get("positive"), limits)
    before = (summary.get("fairness") or {}).get("columns") or {}
    change: dict[str, _Dict] = {}
    for name, column in found["columns"].items():
        change[name] = {
            metric: {
                "fp32": before.get(name, {}).get(metric),
                "variant": value,
                "change": _minus(value, before.get(name, {}).get(metric)),
            }
            for metric, value in column.items()
            if metric not in ("groups", "flags")
        }
        change[name]["new_flags"] = sorted(set(column["flags"]) - set(before.get(name, {}).get("flags", [])))
    return {"fairness": found, "fairness_change": change}


def _minus(after: Any, before: Any) -> float | None:
    if after is None or before is None:
        return None
    value = float(after) - float(before)
    return value if np.isfinite(value) else None


def report_view(study: Mapping[str, Any], fmt: Callable[[Any], str], image: Callable[[Any], str]) -> _Dict:
    """The compression section of the HTML report, formatted (``fmt``) with its plot (``image``: figure → URI)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.2))
    ax = fig.add_subplot()
    for item in study["variants"]:
        hist = item["rank_correlation"]["histogram"]
        ax.stairs(hist["counts"], hist["edges"], label=item["variant"])
    ax.axvline(float(study["min_spearman"]), color="#82071e", lw=0.8, ls="--")
    ax.set_xlabel("per-row Spearman rank correlation of |attribution| with fp32")
    ax.set_ylabel("rows")
    ax.legend(loc="upper left")
    variants = []
    for item in study["variants"]:
        rho, overlap, build = item["rank_correlation"], item["top_k_overlap"], item.get("build") or {}
        overview = [("Rows", fmt(item["rows"]))]
        overview += [(f"Agreement: {k.replace('_', ' ')}", fmt(v)) for k, v in item["agreement"].items()]
        overview += [
            ("Rank correlation: median", fmt(rho["median"])),
            ("Rank correlation: mean", fmt(rho["mean"])),
            ("Rank correlation: p05", fmt(rho["quantiles"].get("p05"))),
            ("Rank correlation: min", fmt(rho["min"])),
            (f"Top-{study['top_k']} overlap: mean", fmt(overlap["mean"])),
            ("Size ratio (build report)", fmt(build.get("size_ratio"))),
            (
                "Speedup single row / batch (build report)",
                f"{fmt(build.get('speedup_single_row'))} / {fmt(build.get('speedup_batch'))}",
            ),
        ]
        fairness_rows = [
            {"column": name, "metric": metric, **{k: fmt(v) for k, v in values.items()}}
            for name, column in item["fairness_change"].items()
            for metric, values in column.items()
            if metric != "new_flags"
        ]
        variants.append(
            {
                "name": item["variant"],
                "flagged": item["drift_flagged"],
                "overview": overview,
                "shift": [{k: fmt(v) for k, v in s.items()} for s in item["importance_shift"]],
                "fairness": fairness_rows,
                "new_flags": [(n, c["new_flags"]) for n, c in item["fairness_change"].items() if c["new_flags"]],
                "changed": [
                    {
                        **{k: fmt(r[k]) for k in ("row", "fp32_prediction", "prediction", "spearman", "top_k_overlap")},
                        "features": [{k: fmt(v) for k, v in f.items()} for f in r["features"]],
                    }
                    for r in item["changed_rows"]
                ],
            }
        )
    return {
        "plot": image(fig),
        "min_spearman": fmt(study["min_spearman"]),
        "top_k": study["top_k"],
        "variants": variants,
    }
