"""The asyncio side of sessions: sockets (UDP with GSO/GRO, TCP, TLS), the clock and the one
timer for every session (timers), the `Session` object applications hold, and
`tether.connect` / `tether.serve` (api). They move bytes between the kernel and the sans-IO
engines in `tether.session.sansio` and decide nothing about the protocol."""
