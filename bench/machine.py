"""What every benchmark names with its figures: the machine's CPU (`pipeline.machine`)."""

from pipeline.machine import cpu_name

__all__ = ["cpu_name"]
