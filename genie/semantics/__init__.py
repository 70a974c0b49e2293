"""Semantics of the captured graph: module context and phase of every node (context.py), the
residency of every value (Node.residency, marked by context.py), recognized patterns
(patterns/), and the analysis that writes them onto a graph (analysis.py)."""
