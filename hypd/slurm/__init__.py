"""Slurm clusters: the `Host` interface over sbatch, squeue and scancel on a login node.

config.py    the [hosts.NAME] table with kind = "slurm"
commands.py  Slurm's commands as hypd runs them, and parsing their output (pure)
tracker.py   which job is which run, and the lifecycle events one look at the queue gives (pure)
probe.py     the script run on the login node once a tick (squeue, log bytes, exit files)
shell.py     running a command on the login node: here, or over SSH
host.py      SlurmHost
"""

from hypd.slurm.config import SlurmConfig
from hypd.slurm.host import SlurmHost

__all__ = ["SlurmConfig", "SlurmHost"]
