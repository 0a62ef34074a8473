"""verify: prove or refute the robustness of ReLU networks exported to ONNX.

    >>> import verify
    >>> net = verify.load_onnx("models/digits_mlp.onnx")
    >>> cert = verify.certify(net, x, label=3, eps=0.01, norm="inf", method="ibp", domain=(0, 1))
    >>> cert.status            # Status.YES / NO / MAYBE
"""

from .backends import certify, certify_batch, certify_specs, methods, register
from .certificate import Certificate, Status
from .errors import InputError, ModelLoadError, UnsupportedModelError, VerifyError
from .network import Conv2d, Dense, Network, ReLU
from .onnx_io import load_onnx
from .spec import Box, LpBall, OutputProperty, Specification, robustness_spec

__all__ = [
    "Box", "Certificate", "Conv2d", "Dense", "InputError", "LpBall", "ModelLoadError", "Network",
    "OutputProperty", "ReLU", "Specification", "Status", "UnsupportedModelError", "VerifyError",
    "certify", "certify_batch", "certify_specs", "load_onnx", "methods", "register",
    "robustness_spec",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    """`verify.smoothing`, `verify.attack`, `verify.vnnlib`, ... imported on first use."""
    import importlib

    if name in ("smoothing", "attack", "vnnlib", "vnncomp", "bounds", "exact"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'verify' has no attribute '{name}'")
