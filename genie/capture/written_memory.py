"""Which arguments of a writing op share memory with what it writes: the notes execution needs to
make one call's writes and reads meet in memory as eager's do.

Execution never writes a stored value: a write runs on a copy of the written tensor's whole
storage (execution.local). Two things then need telling, per call, from the capture-time
aliasing model (tensors that share memory share a ``LazyStorage``):

- an input that reads memory the call writes reads it from that copy (``reads_written``), so a
  row written early is seen by the reads that come later (``x.add_(x[:1].expand_as(x))``);
- written tensors that share memory with an earlier written tensor of the same call write into
  the earlier one's copy (``shared_writes``). A foreach op over views of one buffer (rows of a
  tensor, parameters packed into one flat buffer) or over one tensor listed twice writes every
  element, as eager's loop over the list does; with a copy each, the last copy became the
  storage's value and every other element's write was lost;
- elements of the call's other lists that read written memory read it in those copies
  (``reads_written_items``), so an element sees the writes of the elements before it, as in
  eager's loop (``_foreach_add_([a, b], [b, a])`` adds the new ``a`` to ``b``). An element read at
  the very position it is written, in memory nothing else of the call writes, is left as it is
  (``_foreach_mul_(xs, xs)``): its stored value holds what it reads, and the write may reuse its
  buffer.

Entries name written tensors by their index among the call's written tensors, in flattened
order (``dispatch._build``'s targets); lazy conjugate/negative views are left out (their
memory holds the unflipped values, which a plain alias would read flipped).
"""

from __future__ import annotations

LazyTensor = None  # bound by lazy_tensor.py


def _memory(t):
    """What identifies ``t``'s memory at capture: its LazyStorage, or the tensor when nothing aliases it."""
    return id(t._storage) if t._storage is not None else id(t)


def _plain(t) -> bool:
    return not (t._spec.conj or t._spec.neg)


def notes(oc, args, kwargs, targets, places) -> dict:
    """The runtime notes (``Node.note_runtime``) for a call writing ``targets``, ``[(LazyTensor,
    spec)]`` in flattened order, which sit at ``places`` (``(where, k)``: argument, and position
    in it for a list, else None): only the notes that apply."""
    first: dict[int, int] = {}  # memory -> index of the first written tensor in it
    shared = []
    sizes: dict[int, int] = {}
    for i, (t, _) in enumerate(targets):
        m = _memory(t)
        j = first.setdefault(m, i)
        sizes[m] = sizes.get(m, 0) + 1
        if j != i and _plain(t) and _plain(targets[j][0]):
            shared.append((i, j))
    written = {id(t): i for i, (t, _) in enumerate(targets)}
    written_at = {where for where, _ in oc.mutated}
    reads, items = [], []
    for where, a in list(enumerate(args)) + list(kwargs.items()):
        if where in written_at:
            continue
        if a.__class__ is LazyTensor:
            if id(a) not in written and a._storage is not None:
                i = first.get(id(a._storage))
                if i is not None and _plain(a):
                    reads.append((where, i, a._spec))
        elif a.__class__ is list or a.__class__ is tuple:
            for k, x in enumerate(a):
                if x.__class__ is not LazyTensor or not _plain(x):
                    continue
                m = _memory(x)
                i = first.get(m)
                if i is None:
                    continue
                # an element read at the position it is written, where nothing else writes its
                # memory, reads only its own elements, each before it writes them: its stored value
                # holds them (``_foreach_mul_(xs, xs)``). Any other read of written memory (an
                # element written earlier in the list, or later: the copy holds the old values
                # until then) reads the memory being written, as eager's loop over the list does.
                own = written.get(id(x))
                if own is not None and sizes[m] == 1 and places[own][1] == k:
                    continue
                items.append((where, k, i, x._spec))
    out = {}
    if reads:
        out["reads_written"] = tuple(reads)
    if shared:
        out["shared_writes"] = tuple(shared)
    if items:
        out["reads_written_items"] = tuple(items)
    return out
