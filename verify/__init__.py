"""verify: prove or refute the robustness of ReLU networks exported to ONNX.

    >>> import verify
    >>> net = verify.load_onnx("models/digits_mlp.onnx")
    >>> cert = verify.certify(net, x, label=3, eps=0.01, norm="inf", method="ibp", domain=(0, 1))
    >>> cert.status            # Status.YES / NO / MAYBE
"""

import importlib
import pkgutil

# Public name -> the module defining it, imported on first use (PEP 562): `import verify` and
# the command lines stay free of torch until a name that needs it is read, so that a bad
# argument is refused before torch's import (seconds).
_EXPORTS = {
    **dict.fromkeys(("certify", "certify_batch", "certify_specs", "methods", "register"),
                    "backends"),
    **dict.fromkeys(("Certificate", "Status"), "certificate"),
    **dict.fromkeys(("InputError", "ModelLoadError", "UnsupportedModelError", "VerifyError"),
                    "errors"),
    **dict.fromkeys(("Conv2d", "Dense", "Network", "ReLU"), "network"),
    "load_onnx": "onnx_io",
    **dict.fromkeys(("Box", "LpBall", "OutputProperty", "Specification", "robustness_spec"),
                    "spec"),
}
# every submodule and subpackage (verify.spec, verify.graph, verify.smoothing, ...)
_SUBMODULES = frozenset(module.name for module in pkgutil.iter_modules(__path__)
                        if not module.name.startswith("_"))

__all__ = [
    "Box", "Certificate", "Conv2d", "Dense", "InputError", "LpBall", "ModelLoadError", "Network",
    "OutputProperty", "ReLU", "Specification", "Status", "UnsupportedModelError", "VerifyError",
    "certify", "certify_batch", "certify_specs", "load_onnx", "methods", "register",
    "robustness_spec",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    """The public names (`_EXPORTS`) and the submodules (`verify.spec`, `verify.smoothing`,
    ...) imported on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later reads skip this function
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'verify' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBMODULES})
