"""Eager's exception types, and errors re-raised with the op's name.

One table serves the whole path: a kernel's error is re-raised in process with its own type
(``op_error``), and a server's error, which travels as the type's name, is raised on the client
as the same type (``from_remote``). A type outside the table becomes a RuntimeError.
"""

from __future__ import annotations

import torch

from ..graph.node import op_name

# exception types eager's kernels raise, kept when genie re-raises them with the op's name
EAGER_ERRORS = (RuntimeError, ValueError, IndexError, TypeError, NotImplementedError, ZeroDivisionError)
# what a server's error may be raised as on the client, by name (the wire carries no objects)
REMOTE_ERRORS = {e.__name__: e for e in (*EAGER_ERRORS, KeyError, OverflowError, MemoryError, torch.OutOfMemoryError)}


def op_error(func, e: BaseException, prefix: str | None = None) -> BaseException:
    """Re-raise what eager would raise, with the op's name (or ``prefix``) in front."""
    msg = f"{prefix or op_name(func)}: {e}"
    cls = type(e) if isinstance(e, EAGER_ERRORS) else RuntimeError
    try:
        err = cls(msg)
    except Exception:
        err = RuntimeError(msg)
    err.__cause__ = e
    return err


def from_remote(type_name: str | None, message: str) -> BaseException:
    """A server's error, as the exception type it had there."""
    return REMOTE_ERRORS.get(type_name, RuntimeError)(message)
