"""Deterministic network simulation of reliable sessions (issue 3; docs/architecture.md,
"How it is tested").

A simulated clock and network (network.py) join client SessionEngines to a server Demux;
application models (app.py) send and consume on both sides; the harness (harness.py) drives
everything event by event and checks its invariants after every step;
scenarios.py turns a seed into conditions and settings. The same seed always gives the same
run, on tether._native and on the pure-Python twins alike.
"""
from .harness import Simulation, SimulationFailure, run_scenario
from .scenarios import FAMILIES, Scenario, make_scenario

__all__ = ["FAMILIES", "Scenario", "Simulation", "SimulationFailure", "make_scenario", "run_scenario"]
