"""Count what a piece of torch code dispatches: ops (each one a kernel launch on a GPU) and host syncs.

On an accelerator every dispatched op costs a launch plus Python dispatch (~5-20 us), and every
host sync (``.item()``, ``.tolist()``, ``nonzero``, a copy to the CPU) stalls the stream, so the
number of ops of a hot path, not its flops, decides its speed at small N. ``OpCounter`` counts
them on any device, CPU included, so CI can guard a launch budget without a GPU.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["OpCounter"]

# ops that only make a new view or wrapper of existing memory: dispatched, but no kernel is launched
_VIEW_OPS = frozenset(
    {"slice", "view", "select", "unsqueeze", "squeeze", "alias", "expand", "permute", "transpose", "t", "unbind",
     "diagonal", "as_strided", "detach", "lift_fresh", "_reshape_alias", "reshape", "split", "narrow", "unfold", "view_as"}
)
# ops that make the host wait for the device (a value or a data-dependent shape comes back)
_SYNC_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "unique", "item", "equal")


class OpCounter(TorchDispatchMode):
    """Count the aten ops dispatched inside a ``with`` block.

    Attributes:
        ops: ``Counter`` of op names (``"aten.mm.default"``, ...).
        total: number of ops dispatched.
        launches: the ops among them that launch a kernel (views and wrappers excluded).
        syncs: number of ops that synchronise the host with the device (scalar reads, ``nonzero``,
            ``unique``, copies between devices).

    Example:
        >>> with OpCounter() as c:
        ...     _ = (torch.ones(3) * 2).sum()
        >>> c.total
        3
    """

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.syncs = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = str(func.overloadpacket.__name__)
        self.ops[str(func)] += 1
        if any(s == name or name.startswith(s) for s in _SYNC_OPS):
            self.syncs += 1
        elif name in ("_to_copy", "copy_") and _crosses_devices(args, kwargs or {}):
            self.syncs += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        """Every dispatched op, views included."""
        return int(sum(self.ops.values()))

    @property
    def launches(self) -> int:
        """Dispatched ops that run a kernel on the device: ``total`` minus views / wrappers of existing memory."""
        return int(sum(n for name, n in self.ops.items() if name.split(".")[1] not in _VIEW_OPS))

    def top(self, n: int = 10) -> list[tuple[str, int]]:
        """The ``n`` most frequent ops."""
        return self.ops.most_common(n)


def _crosses_devices(args: tuple, kwargs: dict) -> bool:
    devices = {a.device.type for a in args if isinstance(a, torch.Tensor)}
    dev = kwargs.get("device")
    if dev is not None:
        devices.add(torch.device(dev).type)
    return len(devices) > 1
