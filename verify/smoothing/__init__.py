"""Randomized smoothing: certify the smoothed classifier g(x) = argmax_c P(f(x + noise) = c).

    >>> import verify
    >>> net = verify.load_onnx("models/digits_mlp_noise025.onnx")
    >>> cert = verify.certify(net, x, label=3, eps=0.5, norm="2", method="smoothing", sigma=0.25)
    >>> cert.status, cert.radius, cert.confidence      # about g, at confidence 1 - alpha
    >>> verify.smoothing.predict(net, x, sigma=0.25)   # PREDICT: g(x) or ABSTAIN

Modules: `noise` (distributions and their closed-form shift bounds), `certify` (CERTIFY/PREDICT,
the device sampler, the Certificate mapping: see its docstring for what YES/NO/MAYBE and the
margins mean), `radius` (Clopper-Pearson, radius formulas, certified accuracy, UniCR numerical
radius with its Monte-Carlo error accounted for, and `numerical_radius_curve`: that radius for a
whole grid of pA values on shared samples).
"""

from .certify import (ABSTAIN, NoisySampler, Prediction, SmoothingOptions, predict,
                      predict_batch, predict_from_counts, run)
from .noise import (Gaussian, GeneralNormal, Laplace, Mixture, NoiseDistribution, Uniform,
                    make_noise, standard_gamma_)
from .radius import (NumericalRadius, RadiusCurve, best_case_radius, certified_accuracy,
                     clopper_pearson_lower, clopper_pearson_upper, gaussian_radius,
                     gaussian_radius_two_class, laplace_radius, lower_prob_shifted_mc,
                     min_samples, numerical_radius, numerical_radius_curve, robustness_score,
                     uniform_radius)

__all__ = [
    "ABSTAIN", "Gaussian", "GeneralNormal", "Laplace", "Mixture", "NoiseDistribution",
    "NoisySampler", "NumericalRadius", "Prediction", "RadiusCurve", "SmoothingOptions", "Uniform",
    "best_case_radius", "certified_accuracy", "clopper_pearson_lower", "clopper_pearson_upper",
    "gaussian_radius", "gaussian_radius_two_class", "laplace_radius", "lower_prob_shifted_mc",
    "make_noise", "min_samples", "numerical_radius", "numerical_radius_curve", "predict",
    "predict_batch", "predict_from_counts", "robustness_score", "run", "standard_gamma_",
    "uniform_radius",
]
