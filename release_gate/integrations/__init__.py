"""Integrations that enforce or record the gate in other tools: vLLM's LoRA resolver, serve-args, signing, MLflow."""
