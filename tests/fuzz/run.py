"""The common fuzz runner: one target per process, atheris (libFuzzer) or a plain random
mutator, a JSON report.

    python tests/fuzz/run.py codec --inputs 1000000 --report codec.json
    python tests/fuzz/run.py service --inputs 5000 --engine random --seed 3

Targets (TARGETS below) are modules of this package with a `Target` class:

    layout      mutators.Layout: how an input is cut into config bytes and msgpack parts
    seeds()     valid inputs built with the project's own encoders (the starting corpus)
    one(data)   runs one input; any exception it lets out is a *finding*
    checkpoint()  periodic checks between inputs (the service's canary client)
    figures()   extra numbers for the report

A finding is recorded (its kind, the first inputs that hit it, saved under --artifacts) and
the run goes on, so a soak counts them. What a target allows (ProtocolError from a
decoder, a session fault, an ERROR reply) it swallows itself: that is its property. A hard
crash (a signal in native code) ends the process with libFuzzer's own artifact; an input
running longer than --timeout ends it too (libFuzzer's timer, or under either engine the
runner's watchdog, which dumps every stack and marks the report hung). The parent sees a
non-zero exit or an incomplete report.

Each run is its own process because libFuzzer exits the process when it is done, and so the
peak RSS measured is that target's alone. The tether modules a target exercises are
instrumented by atheris (Python coverage), so libFuzzer keeps the inputs that reach new
Python code; the Cython codec is not instrumented, its twin is. --no-instrument runs
atheris without coverage (several times faster, mutation only).
"""
from __future__ import annotations

import argparse
import faulthandler
import hashlib
import importlib
import json
import os
import random
import resource
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))       # so that `fuzz.<target>` imports

# target -> the tether modules to instrument for coverage (imported before the target)
TARGETS: dict[str, list[str]] = {
    "codec": ["tether._reference.codec"],
    "engine": ["tether.session.sansio.engine", "tether.session.sansio.demux", "tether.session.sansio.fragments",
               "tether._reference.codec", "tether._reference.receive_window",
               "tether._reference.send_window", "tether._reference.rangeset"],
    "protocol": ["tether.queue.protocol"],
    "service": ["tether.queue.protocol", "tether.queue.connection", "tether.queue.service",
                "tether.queue.operations", "tether.queue.manager", "tether.queue.core"],
}
CHECKPOINTS = 20            # RSS samples (and target checkpoints) over a run
WARMUP = 0.2                # RSS growth is measured from this fraction of the run to its end
MAX_SAVED_PER_KIND = 3


def rss_kib() -> int:
    """Resident set size now, in KiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


class Run:
    """One target's run: counts inputs, records findings, samples memory, writes the report."""

    def __init__(self, name: str, target, inputs: int, report: Path, artifacts: Path, engine: str) -> None:
        self.name = name
        self.target = target
        self.inputs = inputs
        self.report_path = report
        self.artifacts = artifacts
        self.engine = engine
        self.done = 0
        self.findings = 0
        self.kinds: dict[str, dict] = {}
        self.rss: list[tuple[int, int]] = []
        self.slowest = 0.0
        self.hung = False
        self.every = max(1, inputs // CHECKPOINTS)
        self.started = time.monotonic()

    def one(self, data: bytes) -> None:
        began = time.perf_counter()
        try:
            self.target.one(data)
        except Exception as exc:  # noqa: BLE001 - every escape is a finding, recorded and counted
            self.record(exc, data)
        took = time.perf_counter() - began
        self.slowest = max(self.slowest, took)
        self.done += 1
        if self.done % self.every == 0 or self.done == self.inputs:
            self.checkpoint()
        if self.done >= self.inputs:
            self.finish()

    def record(self, exc: BaseException, data: bytes) -> None:
        self.findings += 1
        frames = traceback.extract_tb(exc.__traceback__)
        # where: the innermost frame in tether's own code, else the innermost at all
        inner = next((f for f in reversed(frames) if "/src/tether/" in f.filename or "site-packages/tether/" in f.filename),
                     frames[-1] if frames else None)
        where = f"{Path(inner.filename).name}:{inner.lineno}" if inner else "?"
        kind = getattr(exc, "kind", None) or f"{type(exc).__name__} at {where}"
        entry = self.kinds.setdefault(kind, {"count": 0, "message": str(exc)[:300], "inputs": []})
        entry["count"] += 1
        path = self.artifacts / f"finding-{self.name}-{hashlib.sha1(data).hexdigest()[:16]}"
        if len(entry["inputs"]) < MAX_SAVED_PER_KIND and str(path) not in entry["inputs"]:
            self.artifacts.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            entry["inputs"].append(str(path))
            if len(entry["inputs"]) == 1:
                entry["traceback"] = "".join(traceback.format_exception(exc))[-3000:]

    def checkpoint(self) -> None:
        try:
            self.target.checkpoint()
        except Exception as exc:  # noqa: BLE001 - a failed periodic check is a finding too
            self.record(exc, b"checkpoint")
        self.rss.append((self.done, rss_kib()))
        self.write(complete=False)

    def finish(self) -> None:
        self.write(complete=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)         # libFuzzer would go on (or exit on its own terms): this run is done

    def write(self, complete: bool) -> None:
        warm = [kib for n, kib in self.rss if n >= self.inputs * WARMUP]
        report = {
            "target": self.name,
            "engine": self.engine,
            "complete": complete,
            "inputs": self.done,
            "findings": self.findings,
            "hung": self.hung,
            "kinds": self.kinds,
            "seconds": round(time.monotonic() - self.started, 2),
            "slowest_input_seconds": round(self.slowest, 4),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_mib": [(n, round(kib / 1024, 1)) for n, kib in self.rss],
            "rss_growth_mib": round((max(warm) - warm[0]) / 1024, 1) if warm else 0.0,
            "figures": self.target.figures(),
        }
        tmp = self.report_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(self.report_path)


def watchdog(run: Run, timeout: float) -> None:
    """Ends the process when no input finishes for `timeout` seconds (a hang), whatever the
    engine: every thread's stack goes to stderr and the report says where it stopped."""
    last = -1
    while True:
        time.sleep(timeout)
        if run.done == last:
            faulthandler.dump_traceback(all_threads=True)
            run.hung = True
            run.write(complete=False)
            os._exit(3)
        last = run.done


def load(name: str, instrument: bool):
    """The target's module, its tether modules instrumented for coverage when asked."""
    if instrument:
        import atheris
        with atheris.instrument_imports(include=["tether"]):
            for module in TARGETS[name]:
                importlib.import_module(module)
    return importlib.import_module(f"fuzz.{name}")


def seed_corpus(target, corpus: Path | None, name: str) -> Path:
    """The corpus directory (a fresh temporary one by default), with the seeds in it."""
    corpus = corpus or Path(tempfile.mkdtemp(prefix=f"tether-fuzz-{name}-"))
    corpus.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(target.seeds()):
        (corpus / f"seed-{i:04d}").write_bytes(data)
    return corpus


def run_atheris(run: Run, target, seed: int, timeout: float, max_len: int, corpus: Path | None) -> None:
    import atheris

    from fuzz.mutators import StructureMutator

    corpus = seed_corpus(target, corpus, run.name)
    mutator = StructureMutator(target.layout, target.seeds(),
                               byte_mutate=lambda data, size, rng: atheris.Mutate(data, size))
    run.artifacts.mkdir(parents=True, exist_ok=True)
    argv = [sys.argv[0], f"-seed={seed}", f"-max_len={max_len}", f"-timeout={int(timeout)}",
            "-rss_limit_mb=4096", f"-artifact_prefix={run.artifacts}/", "-print_final_stats=1",
            "-reload=0", str(corpus)]
    atheris.Setup(argv, run.one, custom_mutator=mutator)
    atheris.Fuzz()


def run_random(run: Run, target, seed: int, max_len: int, corpus: Path | None) -> None:
    """No coverage feedback: the corpus mutated 1..4 times an input, deterministic for a
    given seed and corpus."""
    from fuzz.mutators import StructureMutator, _byte_mutate

    rng = random.Random(seed)
    corpus = seed_corpus(target, corpus, run.name)
    seeds = [path.read_bytes() for path in sorted(corpus.iterdir())]
    mutator = StructureMutator(target.layout, seeds, byte_mutate=_byte_mutate)
    for data in seeds:
        run.one(data)
    while True:
        data = rng.choice(seeds)
        for _ in range(rng.choice([1, 1, 2, 3, 4])):
            data = mutator(data, max_len, rng.getrandbits(32))
        run.one(data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=sorted(TARGETS))
    parser.add_argument("--inputs", type=int, default=int(os.environ.get("TETHER_FUZZ_INPUTS", "10000")))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--engine", choices=["atheris", "random"], default="atheris")
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--artifacts", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds one input may take")
    parser.add_argument("--max-len", type=int, default=4096)
    parser.add_argument("--corpus", type=Path, default=None,
                        help="corpus directory to start from and (atheris) to add new inputs to")
    parser.add_argument("--no-instrument", action="store_true",
                        help="atheris without Python coverage: faster, mutation only")
    args = parser.parse_args(argv)
    artifacts = args.artifacts or args.report.parent / f"{args.target}-artifacts"
    module = load(args.target, instrument=args.engine == "atheris" and not args.no_instrument)
    target = module.Target(seed=args.seed)
    run = Run(args.target, target, args.inputs, args.report, artifacts, args.engine)
    threading.Thread(target=watchdog, args=(run, args.timeout), daemon=True).start()
    if args.engine == "atheris":
        run_atheris(run, target, args.seed, args.timeout, args.max_len, args.corpus)
    else:
        run_random(run, target, args.seed, args.max_len, args.corpus)


if __name__ == "__main__":
    main()
