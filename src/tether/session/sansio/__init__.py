"""The session protocol without I/O: the engine of one session, the demultiplexer that
routes datagrams to engines, and their parts (frames, windows, congestion control, the close
state tables, address and path validation). Bytes and a `now` go in; bytes, events and the
next deadline come out. No sockets, no event loop, no clock: that is what lets the
deterministic simulation in tests/sim drive the same code the network does."""
