"""Patch-parallel sampling on several devices with ``torch.distributed``.

Every patch of a step reads the step's snapshot only (pixels already advanced this step are
reverted to it, and no other pixel changes before its own patch runs), so the UNet calls of a
step are independent; only the write-back, cheap and order-dependent, must follow the plan's
order. The batches of a step are dealt round-robin to the ranks in rounds of ``world_size``:
each rank runs its batch's UNet (and ControlNet), the predictions are broadcast from their
owners, and every rank then runs the scheduler step and the write-back of the round's batches
in the plan's order. Every rank therefore holds the same latent, and every random draw
(placement, rolls, a stochastic scheduler's noise) is made by every rank in the order of one
process: the result is bitwise that of one process.

Stage-level work (the base image, decoding the previous stage, the guidance encode,
checkpoints, the final decode and writing) is done by rank 0, which broadcasts the stage's
tensors and its generator state; a checkpoint holds nothing rank-specific, so a run resumes
with any number of ranks.

Start with ``torchrun --nproc-per-node N -m pixelsmith generate ...`` or ``pixelsmith generate
--devices N``, or from Python in processes joined by ``torch.distributed.init_process_group``
(``gloo`` on the CPU, ``nccl`` on CUDA), or with :func:`launch`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from common_kernels.runtime.errors import InvalidValue
from pixelsmith.memory import check_copies_memory

# rank 0 alone decodes, encodes and writes whole stages while the others wait in a collective:
# a gigapixel stage takes far longer than torch.distributed's default timeouts
PROCESS_GROUP_TIMEOUT = datetime.timedelta(hours=24)


@dataclass(frozen=True)
class RankGroup:
    """This process's place among the processes of a run (one process: rank 0 of 1).

    Args:
        rank: this process's rank in [0, world_size).
        world_size: number of processes.
    """

    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> RankGroup:
        """The default ``torch.distributed`` process group, or one process when none is set."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def main(self) -> bool:
        """Whether this is rank 0 (which writes files and checkpoints)."""
        return self.rank == 0

    def owner(self, index: int) -> int:
        """The rank that runs the UNet for batch ``index`` of a step (round-robin)."""
        return index % self.world_size

    def broadcast(self, tensor: Tensor, src: int = 0) -> Tensor:
        """``tensor`` of rank ``src`` on every rank, in place (a no-op for one process)."""
        if self.world_size > 1:
            dist.broadcast(tensor, src)
        return tensor

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, 0)
        return box[0]

    def share_tensor(
        self, tensor: Tensor | None, shape: tuple[int, ...], dtype: torch.dtype, device: Any
    ) -> Tensor:
        """Rank 0's ``tensor`` (of ``shape`` and ``dtype``) on every rank, on ``device``."""
        if self.main:
            tensor = tensor.to(device, dtype)
        else:
            tensor = torch.empty(shape, dtype=dtype, device=device)
        return self.broadcast(tensor.contiguous())

    def share_generator(self, generator: torch.Generator) -> None:
        """Give every rank rank 0's generator state (the next draws are then the same)."""
        if self.world_size > 1:
            state = self.share(generator.get_state() if self.main else None)
            generator.set_state(state)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def check_parallel(world_size: int, *, faithful: bool) -> None:
    """Settings that cannot run on several processes.

    Args:
        world_size: number of processes.
        faithful: ``PixelsmithConfig.faithful``.

    Raises:
        InvalidValue: ``faithful=True`` on several processes.
    """
    if world_size > 1 and faithful:
        raise InvalidValue(
            "faithful",
            f"{{faithful=True}} runs in one process, got {world_size} processes: the official "
            "sampler fuses each patch before reverting it, so a patch reads pixels that earlier "
            "patches of the same step changed and the patches of a step cannot run side by side",
        )


def backend_for(device_type: str) -> str:
    """``nccl`` for CUDA devices, ``gloo`` otherwise."""
    return "nccl" if device_type == "cuda" else "gloo"


def check_devices(
    devices: object,
    device: torch.device,
    *,
    launched: int = 1,
    weight_bytes: int | None = None,
    allow_large: bool = False,
) -> int:
    """``devices`` (processes to start) checked against ``device``; returned as an int.

    Args:
        devices: the number of processes, an int >= 1.
        device: where each process runs: ``cpu`` (all on the CPU) or ``cuda`` (one GPU each).
        launched: processes already started for this run (``torchrun``'s ``WORLD_SIZE``).
        weight_bytes: the bytes of the model's weight files (``LoadPlan.weight_bytes``): on
            the CPU, every process holds a copy, checked against the available memory (None:
            unknown, not checked).
        allow_large: skip that memory check.
    """
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise InvalidValue("devices", f"{{devices}} must be an int >= 1, got {devices!r}")
    if devices == 1:
        return devices
    if launched > 1:
        raise InvalidValue(
            "devices",
            f"{{devices}} {devices} starts processes, but this is already one of {launched} "
            "(torchrun): leave {devices} out under torchrun",
        )
    if device.type not in ("cpu", "cuda"):
        raise InvalidValue(
            "devices", f"{{devices}} {devices} runs on cpu or cuda, got {{device}} {device}"
        )
    if device.type == "cuda":
        if device.index is not None:
            raise InvalidValue(
                "devices",
                f"{{devices}} {devices} puts rank r on cuda:r: give {{device}} cuda, not {device}",
            )
        available = torch.cuda.device_count()
        if devices > available:
            raise InvalidValue(
                "devices",
                f"{{devices}} must be in [1, {available}] (the CUDA devices here), got {devices}",
            )
    if weight_bytes is not None:
        check_copies_memory(devices, weight_bytes, device, allow_large=allow_large)
    return devices


def free_port() -> int:
    """A TCP port that is free on this machine now (for the process group's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def init_from_env(device_type: str) -> RankGroup:
    """Join the process group of a ``torchrun`` launch (``RANK``, ``WORLD_SIZE``, ...); each
    rank takes ``cuda:LOCAL_RANK`` when ``device_type`` is ``"cuda"``."""
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend_for(device_type), timeout=PROCESS_GROUP_TIMEOUT)
    return RankGroup.current()


def _worker(
    rank: int,
    fn: Callable[..., object],
    world_size: int,
    port: int,
    device_type: str,
    args: tuple,
) -> None:
    if device_type == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(
        backend_for(device_type),
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=PROCESS_GROUP_TIMEOUT,
    )
    try:
        fn(*args)
    finally:
        dist.destroy_process_group()


def launch(
    fn: Callable[..., object], world_size: int, *args: object, device_type: str = "cpu"
) -> None:
    """Run ``fn(*args)`` in ``world_size`` new processes joined in one process group (``gloo``
    on the CPU, ``nccl`` with rank r on ``cuda:r``); returns when all have finished.

    ``fn`` and ``args`` must be picklable (a module-level function); a failing process ends
    the others and raises ``torch.multiprocessing.ProcessRaisedException`` (or
    ``ProcessExitedException`` for a non-zero exit status) here.

    Args:
        fn: what each process runs (it finds its rank with :meth:`RankGroup.current`).
        world_size: number of processes.
        *args: arguments of ``fn``.
        device_type: ``"cpu"`` or ``"cuda"``.
    """
    port = free_port()
    mp.start_processes(
        _worker,
        args=(fn, world_size, port, device_type, args),
        nprocs=world_size,
        start_method="spawn",
    )


def _status_worker(
    rank: int,
    fn: Callable[..., int],
    world_size: int,
    port: int,
    device_type: str,
    args: tuple,
) -> None:
    """:func:`_worker` for a function returning an exit status (non-zero: the process exits
    with it); only rank 0 writes to stderr (one error line, not one per rank)."""
    status = 0

    def run(*inner: object) -> None:
        nonlocal status
        status = fn(*inner)

    with contextlib.ExitStack() as stack:
        if rank != 0:
            stack.enter_context(
                contextlib.redirect_stderr(stack.enter_context(open(os.devnull, "w")))
            )
        _worker(rank, run, world_size, port, device_type, args)
    if status:
        sys.exit(status)


def run_on_ranks(fn: Callable[..., int], world_size: int, device_type: str, *args: object) -> int:
    """Run ``fn(*args)`` (returning an exit status) in ``world_size`` joined processes; the
    first non-zero status, or 0. Only rank 0's stderr is shown.

    Ctrl-C reaches every rank (this process ignores it meanwhile and returns their status);
    SIGTERM here ends the ranks with SIGTERM before it is re-raised.

    Args:
        fn: a module-level function returning an exit status.
        world_size: number of processes.
        device_type: ``"cpu"`` (gloo) or ``"cuda"`` (nccl, rank r on ``cuda:r``).
        *args: arguments of ``fn``.
    """
    context = mp.start_processes(
        _status_worker,
        args=(fn, world_size, free_port(), device_type, args),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the ranks handle Ctrl-C
    try:
        while not context.join():
            pass
    except mp.ProcessExitedException as error:
        return error.exit_code if error.exit_code > 0 else 128 - error.exit_code
    except BaseException:  # SIGTERM here (or any failure): end the ranks first
        for process in context.processes:
            if process.is_alive():
                process.terminate()
        for process in context.processes:
            process.join()
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    return 0
