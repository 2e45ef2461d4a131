"""hybridft: hybrid fine-tuning of pretrained transformers from one YAML recipe.

The Python API: ``hybridft.run`` trains from a recipe, ``hybridft.load`` loads a saved model (adapters
restored), ``hybridft.Recipe`` builds recipes in code. They are imported on first use, so that
``import hybridft`` (and the command line's ``--help``) starts without loading torch.
"""

from typing import TYPE_CHECKING

__version__ = "0.2.0"
__all__ = ["Callback", "EvaluationView", "Recipe", "RunResult", "SavedModel", "StageEndView", "StepView", "Stop",
           "load", "run", "validate"]
HOOKS = ("Callback", "Stop", "StepView", "EvaluationView", "StageEndView")  # callbacks of hybridft.run

if TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ imports on first use
    from .api import RunResult, SavedModel, load, run, validate
    from .recipe import Recipe
    from .training.hooks import Callback, EvaluationView, StageEndView, StepView, Stop


def _imported(module: str):
    """A submodule imported on first use, with Python's random generator as the caller had it: a
    library it pulls in may draw from it when imported (rich, through scikit-learn, does)."""
    import importlib
    import random

    state = random.getstate()
    try:
        return importlib.import_module(f".{module}", __name__)
    finally:
        random.setstate(state)


def __getattr__(name: str):
    if name in ("run", "load", "validate", "RunResult", "SavedModel"):
        return getattr(_imported("api"), name)
    if name in HOOKS:
        return getattr(_imported("training.hooks"), name)
    if name == "Recipe":
        return _imported("recipe").Recipe
    raise AttributeError(f"module 'hybridft' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
