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


def __getattr__(name: str):
    if name in ("run", "load", "validate", "RunResult", "SavedModel"):
        from . import api

        return getattr(api, name)
    if name in HOOKS:
        from .training import hooks

        return getattr(hooks, name)
    if name == "Recipe":
        from .recipe import Recipe

        return Recipe
    raise AttributeError(f"module 'hybridft' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
