"""Thin entry points: argument parsing and error reporting only (``python -m launch.train``)."""
