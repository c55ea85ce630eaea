"""CapSolver's cloud as an engine: the reader that pays for createTask (:mod:`.reader`), the
account guard that keeps its calls bounded (:mod:`.account`: concurrency, pauses, the balance
gate, stops) and the retry policy (:mod:`.retry`)."""
