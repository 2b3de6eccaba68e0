"""transformers, imported without its torch advisory.

The library uses transformers for tokenizers, configurations and chat templates only; its models
are the library's own NNX modules. Without torch installed, ``import transformers`` logs
"PyTorch was not found. Models won't be available ..." through ``logger.warning_advice``, which
is true of transformers and irrelevant to this library, so every import goes through
:func:`import_transformers`, which sets ``TRANSFORMERS_NO_ADVISORY_WARNINGS`` for the import
alone (a user's own setting of that variable is left as it is).
"""

from __future__ import annotations

import os
import sys
import types

_NO_ADVICE = "TRANSFORMERS_NO_ADVISORY_WARNINGS"


def import_transformers() -> types.ModuleType:
    """The ``transformers`` module, imported without its "PyTorch was not found" line."""
    if "transformers" in sys.modules:
        return sys.modules["transformers"]
    previous = os.environ.get(_NO_ADVICE)
    os.environ[_NO_ADVICE] = "1"
    try:
        import transformers
    finally:
        if previous is None:
            os.environ.pop(_NO_ADVICE, None)
        else:
            os.environ[_NO_ADVICE] = previous
    return transformers
