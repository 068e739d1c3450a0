"""How finephrase reaches a model: embedded llama.cpp replicas, OpenAI-compatible or TGI endpoints."""
