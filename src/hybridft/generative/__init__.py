"""Causal language models and sequence-to-sequence models: data, models, generation, metrics."""
