"""Thin entry points: parse arguments, call the pipeline (`python -m jobs.<name>`)."""
