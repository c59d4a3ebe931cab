"""Deterministic simulation of the queue core (docs/architecture.md, "How it is tested").

QueueCores run on a simulated clock with simulated journals (node.py, journal.py), driven
by seeded applications (actors.py) and forwarders over a partitioning link (forward.py);
a reference model (model.py) says what each core should do, and the harness (harness.py)
checks every step against it. scenarios.py turns (family, seed) into a run, so a seed
always replays the same run.
"""
from .harness import Simulation, SimulationFailure, run_scenario
from .scenarios import FAMILIES, Scenario, make_scenario

__all__ = ["FAMILIES", "Scenario", "Simulation", "SimulationFailure", "make_scenario", "run_scenario"]
