"""Every known conformance failure, with its reason and the failure it expects. Applied as strict
expected failures: an entry that starts passing fails the run until it is removed, and so does a
failure the entry does not expect (another sample, or another message), so a known failure in a
cell cannot hide a new one beside it. Keys are exact: (OpInfo name with variant test name,
variant, dtypes, device); no patterns.

Variants: "function", "method", "inplace", "out".
"""

from __future__ import annotations

import re
from typing import NamedTuple


class Expected(NamedTuple):
    """The failures a cell (or model check) is known to have: by sample index, by message, or both."""

    reason: str
    # the indices of the samples (module_db: forward inputs) that fail; () when any sample may
    samples: tuple[int, ...] = ()
    # a regular expression every failure's text must match ("ExcType: message"); "" for any text
    match: str = ""

    def expects(self, index: int, failure: str) -> bool:
        return (not self.samples or index in self.samples) and (not self.match or re.search(self.match, failure)
                                                                  is not None)

    def mismatches(self, failures: dict[int, str], checked: int) -> list[str]:
        """What differs from this entry in a run: failures it does not expect, listed samples that pass
        now, or no failure at all. ``failures``: sample index -> failure text; ``checked``: samples run."""
        problems = [f"unexpected failure, sample {i}: {text}" for i, text in sorted(failures.items())
                    if not self.expects(i, text)]
        problems += [f"sample {i} passes now: remove it from the entry" if i < checked else
                     f"sample {i} is not among the {checked} samples: the entry is stale"
                     for i in self.samples if i not in failures]
        if not failures:
            problems.append("passes now: remove its manifest entry")
        return problems


class XFail(NamedTuple):
    op: str  # "<OpInfo.name>.<variant_test_name or default>"
    variants: tuple[str, ...]
    dtypes: tuple[str, ...]  # "float32", ...; ("*",) for every dtype the OpInfo supports
    devices: tuple[str, ...]
    expected: Expected


ALL = ("*",)
CPU = ("cpu",)
BOTH = ("cpu", "cuda")

SPARSE = Expected("genie captures strided tensors only: an op given a sparse CSR input on the device is refused "
                  "loudly (NotImplementedError), as PyTorch's sparse kernels build components a Python PrivateUse1 "
                  "backend cannot reach", match=r"^NotImplementedError: .*torch\.sparse_csr tensors are not supported "
                                                 r"on remote_accelerator")
# the out= variant fails one step earlier, making its out tensor: the sparse CSR out= tensor made on the
# device has no fill_ (PyTorch's dispatcher has no SparseCsr kernel for a PrivateUse1 backend)
SPARSE_OUT = Expected(SPARSE.reason + "; an out= tensor of that layout cannot even be filled on the device",
                      match=r"^NotImplementedError: .*('SparseCsrremote_accelerator' backend"
                            r"|torch\.sparse_csr tensors are not supported on remote_accelerator)")
CHUNKED_BF16 = ("the chunked path's acc_policy='auto' picks the accumulation by device type; on remote_accelerator "
                "it does not pick CPU's, so bf16 losses differ by rounding")

# the bf16 losses that round differently: the samples (of torch.manual_seed(0)'s sample inputs) whose loss
# lands on the other side of a bf16 rounding step
CHUNKED_BF16_VALUES = r"^AssertionError: first run: output\[0\]: (Scalars|Tensor-likes) are not close"

XFAILS: list[XFail] = [
    XFail("nn.functional.linear_cross_entropy.chunked", ("function",), ("bfloat16",), CPU,
          Expected(CHUNKED_BF16, match=CHUNKED_BF16_VALUES,
                   samples=(0, 3, 14, 17, 18, 29, 31, 42, 46, 56, 70, 71, 73, 87, 88, 91, 92, 94, 95, 98, 101, 126,
                            127, 129, 151))),
    XFail("nn.functional.linear_cross_entropy.chunked_none", ("function",), ("bfloat16",), CPU,
          Expected(CHUNKED_BF16, match=CHUNKED_BF16_VALUES,
                   samples=(0, 1, 3, 4, 14, 15, 17, 18, 29, 32, 43, 46, 57, 60, 70, 71, 74))),
    XFail("sparse.mm.reduce", ("function",), ALL, BOTH, SPARSE),
    XFail("sparse.sampled_addmm.default", ("function",), ALL, BOTH, SPARSE),
    XFail("sparse.sampled_addmm.default", ("out",), ALL, BOTH, SPARSE_OUT),
]


def lookup(op: str, variant: str, dtype: str, device: str) -> Expected | None:
    """The failures this cell is expected to have, or None."""
    for x in XFAILS:
        if x.op == op and variant in x.variants and device in x.devices and (x.dtypes == ALL or dtype in x.dtypes):
            return x.expected
    return None


# Model-zoo and module_db checks expected to fail: (model or ModuleInfo name, check) -> expected failures.
LAZY_MODULES = Expected(
    "nn.Lazy* modules keep their UninitializedParameter through .to() by `param.data = moved`, a shallow copy "
    "PyTorch allows only between its own dense backends (CPU, CUDA, ...), never to PrivateUse1; moved as plain "
    "Parameters they never materialize (move a lazy module after its first forward)",
    # the moved weight is an empty plain tensor: the convolution refuses it (by name when genie captures it, by
    # PyTorch's own message where the module checks its weight first)
    match=r"^RuntimeError: (aten::convolution: )?weight should have at least three dimensions")

MODEL_XFAILS: dict[tuple[str, str], Expected] = {
    (f"nn_Lazy{kind}", f"forward-{mode}"): LAZY_MODULES
    for kind in ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d")
    for mode in ("eval", "train")
}


def lookup_model(model: str, check: str) -> Expected | None:
    return MODEL_XFAILS.get((model, check))
