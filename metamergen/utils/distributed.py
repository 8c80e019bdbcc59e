"""Leaving a torch.distributed process group cleanly (``accelerate launch`` / ``torchrun`` runs)."""

from __future__ import annotations

__all__ = ["leave_process_group"]


def leave_process_group() -> None:
    """Destroy this process's process group, if any, before it exits.

    A rank that exits with its gloo group alive can abort in C++ ("terminate called without an
    active exception", SIGABRT) while another rank is still working, which fails the launch. The
    call is local to the rank, so a rank that finishes early can leave without waiting for the others.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
