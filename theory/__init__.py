"""The convergence claims of delta-based LLM-NAS, stated as code.

Pure numpy/scipy/statsmodels/xarray; imports nothing else of the project.

- ``theory.proxy``: SNR -> Pearson -> Spearman/Kendall closed forms, Moran's finite-n
  expectation, Fisher-z intervals, the copula check, pairs needed to test the arcsin law.
- ``theory.reliability``: ICC(1)/SNR from replicate proxy runs (ANOVA and REML),
  Spearman-Brown, attenuation correction.
- ``theory.cem``: mixture-smoothed CE update, the identity
  ``1 - p_{t+1}(E) = alpha (1 - q_t(E)) + (1 - alpha)(1 - p_t(E))``, elite helpers, exact
  and sampled CE simulators (categorical and PBIL-style with a neutral drift coordinate).
- ``theory.validity``: P(valid | length) under independent and Markov token errors,
  their MLE and the predicted vs measured delta/full valid-rate ratio.
- ``theory.convergence``: Wilson interval, geometric-rate fit, Page and Theil-Sen trends.
"""
