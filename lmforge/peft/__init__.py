"""Parameter-efficient delta tuning: one contract (base.py), one file per method, the
virtual-token machinery (virtual/) and peft's file formats (interop/). Importing this
package registers every method."""

from lmforge.model.targets import default_targets, match_targets
from lmforge.peft import (  # noqa: F401  (importing registers the methods)
    adapter,
    bitfit,
    lora,
    prefix,
    prompt_tuning,
    ptuning,
    ptuning_v2,
    qlora,
)
from lmforge.peft.base import (
    METHODS,
    DeltaMethod,
    apply,
    build,
    count_parameters,
    freeze,
    load_delta,
    register,
)
from lmforge.peft.interop import load_adapter

__all__ = [
    "METHODS",
    "DeltaMethod",
    "apply",
    "build",
    "count_parameters",
    "default_targets",
    "freeze",
    "load_adapter",
    "load_delta",
    "match_targets",
    "register",
]
