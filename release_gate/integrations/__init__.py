"""Integrations that enforce the gate inside other tools (vLLM's LoRA resolver plugin)."""
