"""Recourse: what would change a model's decision.

``space`` (the feasible moves of each feature: constraints over the background), ``goal`` (the outcome wanted),
``search`` (our seeded, vectorised counterfactual search), ``quality`` (validity, proximity, sparsity,
plausibility, diversity), ``counterfactual`` (a request validated, run and answered as JSON) and ``surrogate`` (a
shallow decision tree mimicking the model). Recourse over an audit's rows is :mod:`engine.audits.recourse`; what
a counterfactual may change is :mod:`engine.models.constraints` (part of the card).
"""
