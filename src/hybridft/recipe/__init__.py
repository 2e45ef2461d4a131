"""The recipe: YAML validated by pydantic. ``schema`` holds the recipe and its stages, ``sections`` the
settings sections, ``checks`` what no section can check alone, ``io`` files, ``extends:`` and overrides."""

from .io import (
    apply_cwd_paths,
    apply_overrides,
    cwd_path,
    format_validation_error,
    load_recipe,
    read_recipe_data,
    recipe_json_schema,
    resolved_recipe_text,
    validate_recipe,
)
from .schema import MixStageSpec, Recipe, StageSpec
from .sections import Columns, DataSpec, GenerationSpec, LanguagePair, MixSpec, ModelSpec, OptimizerSpec

__all__ = ["Columns", "DataSpec", "GenerationSpec", "LanguagePair", "MixSpec", "MixStageSpec", "ModelSpec",
           "OptimizerSpec", "Recipe", "StageSpec",
           "apply_cwd_paths", "apply_overrides", "cwd_path", "format_validation_error", "load_recipe", "read_recipe_data",
           "recipe_json_schema", "resolved_recipe_text", "validate_recipe"]
