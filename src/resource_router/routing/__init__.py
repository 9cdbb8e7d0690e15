"""Floor 4, routing: a call from the caller to the owner and back.

The caller: ``ServiceClient`` over an owner resolver (cache, lookup, placement's choice), a call table
and the routing policy (``attempts.py``). The owner: ``ServiceInstance`` and its parts, the dispatcher's
ordered steps, the admission rule, jobs, stale-request confirmation, replies and the lease keeper. The
wire protocol and signed envelopes. Imports ``placement`` and below.
"""
