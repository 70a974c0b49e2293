"""How the layer above capture plugs into it: one object, ``semantics``, whose callables capture
calls when they are set (capture never imports semantics).

- ``first_use()``: called on the first capture of the process (the facade sets it to
  ``semantics.context.install``, which clears it);
- ``backward_context()``: the module context of a backward op being captured;
- ``module_moved(module)``: a module was moved onto (or off) the device;
- ``module_restored(module)``: a module's state was just set (a copy, an unpickling).
"""

from __future__ import annotations

from collections.abc import Callable


class SemanticHooks:
    __slots__ = ("first_use", "backward_context", "module_moved", "module_restored")

    def __init__(self):
        self.first_use: Callable[[], None] | None = None
        self.backward_context: Callable[[], object] | None = None
        self.module_moved: Callable[[object], None] | None = None
        self.module_restored: Callable[[object], None] | None = None

    def connect(self, *, backward_context, module_moved, module_restored) -> None:
        self.backward_context, self.module_moved, self.module_restored = backward_context, module_moved, module_restored

    def disconnect(self) -> None:
        self.backward_context = self.module_moved = self.module_restored = None


semantics = SemanticHooks()
