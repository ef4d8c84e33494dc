"""The op registry: every op the server offers, by name."""

from __future__ import annotations

from ..errors import UnknownOp
from .base import OpSpec


def _load() -> dict[str, OpSpec]:
    from . import colormatch, harmonize, propagate, restyle, smooth

    return {op.name: op for op in (colormatch.OP, harmonize.OP, restyle.OP, propagate.OP, smooth.OP)}


_OPS: dict[str, OpSpec] | None = None


def all_ops() -> dict[str, OpSpec]:
    global _OPS
    if _OPS is None:
        _OPS = _load()
    return _OPS


def get_op(name: str) -> OpSpec:
    ops = all_ops()
    if name not in ops:
        raise UnknownOp(f"unknown op {name!r}; this server offers {', '.join(sorted(ops))}")
    return ops[name]
