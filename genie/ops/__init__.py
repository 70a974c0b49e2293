"""Facts about ops that capture and execution both read: what an op does to its arguments
(``schema``), the exception types eager raises and how genie re-raises them (``errors``), and the
ops of the RNG chain's nodes (``rng_links``). Below capture and execution, beside the graph."""
