"""Which process this is in a job over several (torchrun, SLURM, Lightning's launcher), known
before any process group exists: for what only the first process may do (lock an output, check
that an output folder is new)."""

from __future__ import annotations

import os

# Set by torchrun (RANK, LOCAL_RANK), Lightning's subprocess launcher (LOCAL_RANK, NODE_RANK)
# and SLURM (SLURM_PROCID) in every process but the first; absent when running alone.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def launcher_rank() -> int:
    """0 for the first (or only) process, else the first non-zero rank its launcher set."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "0")
        if value.isdigit() and int(value) != 0:
            return int(value)
    return 0
