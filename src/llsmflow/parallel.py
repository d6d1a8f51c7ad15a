"""How many threads a dask client offers: shared by chunked deconvolution and fusion.

It sits at the bottom of the house (beside :mod:`llsmflow.io`) because the processing packages size their
batches of chunks from it, and they may not import the HPC layer that creates the client
(:mod:`llsmflow.hpc`).
"""

from __future__ import annotations


def client_threads(client) -> int:
    """Threads of all the client's ``distributed`` workers now (at least 1)."""
    return max(1, sum(client.nthreads().values()))
