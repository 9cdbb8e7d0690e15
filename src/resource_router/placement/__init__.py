"""Floor 3, placement: where a resource nobody owns goes, and how resources move.

Strategies (rendezvous hashing, least loaded, random), the directory of live volunteers a caller
reads, a volunteer's claims of activations, and moves (drain, rebalance, idle release) with one
handoff. Imports ``ownership`` and below; the instance that runs these parts lives in ``routing``.
"""
