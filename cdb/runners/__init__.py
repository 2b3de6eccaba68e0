"""The two ways ``cdb.run`` plays an experiment (docs/design.md §4).

* :class:`~cdb.runners.compiled.CompiledRunner` — pure-JAX environments: blocks of rounds as one
  jitted ``vmap(scan)`` over seeds, in seed chunks, optionally sharded over devices.
* :class:`~cdb.runners.host.HostRunner` — environments whose oracle runs on the host: a
  round-by-round loop around jitted, vmapped agent functions.

Both take the same per-seed :class:`~cdb.runners.common.Carry` and keys, so results and
checkpoints are interchangeable. ``cdb.run`` (in :mod:`cdb.run`) drives either.
"""

from cdb.runners.common import Carry
from cdb.runners.compiled import CompiledRunner, compiled_runner
from cdb.runners.host import HostRunner

__all__ = ["Carry", "CompiledRunner", "HostRunner", "compiled_runner"]
