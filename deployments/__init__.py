"""Switchyard on Ray Serve: the OpenAI-compatible Router, one LLMServer deployment per model, `build_app`."""
