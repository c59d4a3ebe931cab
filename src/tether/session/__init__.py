"""Reliable sessions: `sansio` holds the protocol (engines, no I/O), `adapters` runs it on
asyncio sockets and gives applications `tether.connect`, `tether.serve` and `Session`."""
