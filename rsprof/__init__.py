"""rsprof: a CPU and heap profiler for Rust programs on Linux."""

__version__ = "0.1.0"
