"""mkdocs hook: pages that are generated at build time, so they cannot drift from the code.

- The recipe reference page holds ``REFERENCE``; it becomes
  ``hybridft.recipe.reference.reference_markdown()``, the tables generated from the schema.
- The shipped-recipes page holds ``RECIPES``; it becomes a table of every recipe under
  ``recipes/`` and ``benchmarks/recipes/`` with its one-line purpose (each file's second line).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = "<!-- recipe-reference: generated from the schema at build time -->"
RECIPES = "<!-- recipe-list: generated from recipes/ and benchmarks/recipes/ at build time -->"
MARKER = REFERENCE  # the test suite's name for it


def purpose(path: Path) -> str:
    lines = path.read_text(encoding="utf-8").splitlines()
    text = lines[1].lstrip("#").strip() if len(lines) > 1 and lines[1].startswith("#") else ""
    return text.replace("|", "\\|").replace("<", "&lt;")


def recipe_table(folder: str) -> str:
    rows = ["| recipe | purpose |", "|---|---|"]
    for path in sorted((ROOT / folder).glob("*.yaml")):
        extends = next((line.split(":", 1)[1].strip() for line in path.read_text(encoding="utf-8").splitlines()
                        if line.startswith("extends:")), None)
        note = f" (extends `{extends}`)" if extends else ""
        rows.append(f"| `{folder}/{path.name}` | {purpose(path)}{note} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page=None, config=None, files=None, **kwargs) -> str:
    if REFERENCE in markdown:
        from hybridft.recipe.reference import reference_markdown

        markdown = markdown.replace(REFERENCE, reference_markdown())
    if RECIPES in markdown:
        markdown = markdown.replace(RECIPES, "## Examples: `recipes/`\n\n" + recipe_table("recipes") +
                                    "\n\n## Research recipes: `benchmarks/recipes/`\n\n" +
                                    recipe_table("benchmarks/recipes"))
    return markdown
