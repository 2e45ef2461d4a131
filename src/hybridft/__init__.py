"""hybridft: hybrid fine-tuning of pretrained transformers from one YAML recipe."""

__version__ = "0.1.0"
