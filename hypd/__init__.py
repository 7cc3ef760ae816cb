"""hypd: a hyperparameter-search daemon for GPU machines reached over SSH.

Training scripts import `hypd.report`; it prints the `METRICS:` line hypd reads and
imports nothing heavy.
"""

from hypd.report import report

__version__ = "0.1.0"
__all__ = ["report", "__version__"]
