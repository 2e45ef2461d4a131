"""hybridft: hybrid fine-tuning of pretrained transformers from one YAML recipe.

The Python API: ``hybridft.run`` trains from a recipe, ``hybridft.load`` loads a saved model (adapters
restored), ``hybridft.Recipe`` builds recipes in code. They are imported on first use, so that
``import hybridft`` (and the command line's ``--help``) starts without loading torch.
"""

__version__ = "0.2.0"
__all__ = ["Recipe", "RunResult", "SavedModel", "load", "run"]


def __getattr__(name: str):
    if name in ("run", "load", "RunResult", "SavedModel"):
        from . import api

        return getattr(api, name)
    if name == "Recipe":
        from .recipe import Recipe

        return Recipe
    raise AttributeError(f"module 'hybridft' has no attribute {name!r}")
