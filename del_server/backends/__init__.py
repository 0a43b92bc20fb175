"""Execution backends: what runs the frozen LLM on prompt embeddings (see base.Backend)."""
