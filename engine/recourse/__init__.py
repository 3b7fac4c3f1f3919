"""Recourse: what would change a model's decision.

``space`` (the feasible moves of each feature: constraints over the background), ``goal`` (the outcome wanted),
``search`` (our seeded, vectorised counterfactual search), ``quality`` (validity, proximity, sparsity,
plausibility, diversity), ``counterfactual`` (a request validated, run and answered as JSON), ``surrogate`` (a
shallow decision tree mimicking the model) and ``burden`` (recourse over an audit's rows).
"""
