"""Fuzzing (tests/fuzz/, README.md there): every target for a few thousand inputs in CI, a
soak of a million inputs per target (`-m soak`), and the regressions the fuzzers found.

Each target runs in its own process (tests/fuzz/run.py), under atheris with the tether
modules it exercises instrumented for coverage; its report says how many inputs ran, what
they found, the peak RSS and how much the RSS grew after warm-up. CI: about 4,000 inputs
per target, a few seconds each. The soak:

    TETHER_FUZZ_INPUTS=1000000 python -m pytest -q -m soak tests/test_fuzz.py -s

runs, per target, a tenth of the inputs under atheris, instrumented (coverage-guided:
libFuzzer keeps the inputs that reach new Python code, in a corpus directory), and the rest
with the runner's own mutator on that corpus, uninstrumented and so several times faster;
two targets at a time. Its last figures are in tests/fuzz/README.md.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import tether
from tether.errors import ProtocolError
from tether.queue import protocol as P

from fuzz.protocol import hello as fuzz_hello

FUZZ = Path(__file__).parent / "fuzz"
TARGETS = ["codec", "engine", "protocol", "service"]
CI_INPUTS = 4000
# RSS may grow this much after the first fifth of a run (libFuzzer's corpus, allocator
# arenas); a leak of even a few hundred bytes an input is far above it in a soak.
RSS_GROWTH_MIB = {"ci": 16, "soak": 48}

try:
    import atheris  # noqa: F401
    ENGINE = "atheris"
except ImportError:         # no wheel for this platform: the plain random mutator
    ENGINE = "random"


def fuzz(target: str, inputs: int, report: Path, *, seed: int = 1, engine: str = ENGINE,
         corpus: Path | None = None, timeout: float = 600) -> dict:
    """Runs one target in its own process; its report, with the exit code and stderr tail."""
    env = dict(os.environ)
    # the child imports the tether this test process imported (a checkout's src/, or the
    # installed package)
    home = str(Path(tether.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [home, env.get("PYTHONPATH")]))
    command = [sys.executable, str(FUZZ / "run.py"), target, "--inputs", str(inputs), "--seed", str(seed),
               "--engine", engine, "--report", str(report)]
    if corpus is not None:
        command += ["--corpus", str(corpus)]
    began = time.monotonic()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          timeout=timeout, check=False)       # the exit code is checked with the report
    result = json.loads(report.read_text()) if report.exists() else {"inputs": 0, "findings": 0}
    result["exit_code"] = done.returncode
    result["wall_seconds"] = round(time.monotonic() - began, 1)
    stderr = done.stderr.decode(errors="replace")
    result["stderr_tail"] = stderr[-3000:]
    # libFuzzer's last word on Python coverage: edges reached and features
    coverage = re.findall(r"cov: (\d+) ft: (\d+)", stderr)
    result["coverage"] = {"edges": int(coverage[-1][0]), "features": int(coverage[-1][1])} if coverage else None
    return result


def check(result: dict, inputs: int, growth_mib: float) -> None:
    """The property of every target: every input ran, nothing but documented errors, no
    hang, no crash, memory flat after warm-up."""
    assert result["exit_code"] == 0, f"the fuzz process failed:\n{result['stderr_tail']}"
    assert result.get("complete") and result["inputs"] == inputs, result
    assert not result["hung"], result["stderr_tail"]
    assert result["findings"] == 0, json.dumps(result["kinds"], indent=1)
    assert result["rss_growth_mib"] <= growth_mib, result["rss_mib"]


# ---------------------------------------------------------------- CI: a short run per target

@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target(target, tmp_path):
    result = fuzz(target, CI_INPUTS, tmp_path / f"{target}.json", timeout=300)
    check(result, CI_INPUTS, RSS_GROWTH_MIB["ci"])
    # the inputs got past the first checks, into what the target is there to test
    figures = result["figures"]
    reached = {"codec": figures.get("decoded", 0), "engine": figures.get("sessions_created", 0),
               "protocol": figures.get("requests", 0), "service": figures.get("replies", 0)}[target]
    assert reached > CI_INPUTS // 100, figures
    if target == "service":
        assert figures["canary_checks"] == 20, figures      # a client was served at every checkpoint


def test_every_target_has_seeds_that_pass(tmp_path):
    # the seeds are valid inputs: none of them is a finding, and each target decodes most
    # of them (a harness that rejected everything would test nothing)
    import fuzz.codec
    import fuzz.protocol

    codec_target = fuzz.codec.Target()
    for data in codec_target.seeds():
        codec_target.one(data)
    assert codec_target.counts["decoded"] >= len(codec_target.seeds()) - 1
    protocol_target = fuzz.protocol.Target()
    for data in protocol_target.seeds():
        protocol_target.one(data)
    assert protocol_target.counts["not_frames"] == 0 and protocol_target.counts["refused_items"] == 0


async def test_service_seeds_and_mutants_over_real_loopback_sessions():
    # the service target's HostileSession stands in for a reliable session; here a few of
    # its inputs go through the real thing: serve() on loopback and a raw client session
    import random

    from fuzz.mutators import StructureMutator, _byte_mutate
    from fuzz.service import Target as ServiceTarget
    from fuzz.service import seed_inputs

    layout = ServiceTarget.layout
    seeds = seed_inputs()
    mutator = StructureMutator(layout, seeds, byte_mutate=_byte_mutate)
    rng = random.Random(4)
    inputs = seeds[::4] + [mutator(rng.choice(seeds), 4096, rng.getrandbits(32)) for _ in range(8)]
    hello = P.encode([fuzz_hello()])
    async with tether.QueueManager.open(None, listen="tcp://127.0.0.1:0") as qm:
        await qm.create_queue("q")
        url = qm.services[0].url
        for data in inputs:
            config, frames = data[0], [f for f in layout.split(data)[1] if f]
            if config & 0x01:
                frames.insert(0, hello)
            session = await tether.connect(url, **P.SESSION_SETTINGS)
            try:
                for frame in frames:
                    await session.send(frame)
                while True:             # replies until the service ends the session or goes quiet
                    for reply in await asyncio.wait_for(session.recv_many(), 0.15):
                        for item in P.decode(reply):
                            P.parse_response(item)
                            assert item[0] != P.ERROR or item[2] != "internal-error", item
            except (tether.TetherError, TimeoutError):
                pass
            finally:
                session.abort("done")
        await qm.create_queue("canary")                 # (the inputs may have deleted "q")
        async with tether.QueueClient.connect(url) as client:      # others are still served
            await client.send("canary", b"after")
            assert (await client.receive("canary", timeout=5)).body == b"after"


# ---------------------------------------------------------------- soak

@pytest.mark.soak
@pytest.mark.timeout(0)         # hours, not the suite's two minutes; each run has its own bound
def test_fuzz_soak(tmp_path):
    inputs = int(os.environ.get("TETHER_FUZZ_INPUTS", "1000000"))
    covered = max(inputs // 10, 1)

    def soak(target: str) -> tuple[dict, dict]:
        corpus = tmp_path / f"{target}-corpus"
        first = fuzz(target, covered, tmp_path / f"{target}-covered.json", corpus=corpus, timeout=6 * 3600)
        rest = fuzz(target, inputs - covered, tmp_path / f"{target}-fast.json", seed=2, engine="random",
                    corpus=corpus, timeout=6 * 3600)
        first["corpus_files"] = len(list(corpus.iterdir()))
        return first, rest

    with ThreadPoolExecutor(max_workers=2) as pool:      # two targets at a time: two cores
        results = dict(zip(TARGETS, pool.map(soak, TARGETS)))
    for target, (first, rest) in results.items():
        print(json.dumps({
            "target": target, "inputs": first["inputs"] + rest["inputs"],
            "findings": first["findings"] + rest["findings"],
            "kinds": sorted({**first["kinds"], **rest["kinds"]}),
            "peak_rss_mib": max(first["peak_rss_mib"], rest["peak_rss_mib"]),
            "rss_growth_mib": [first["rss_growth_mib"], rest["rss_growth_mib"]],
            "seconds": [first["wall_seconds"], rest["wall_seconds"]],
            "slowest_input_seconds": max(first["slowest_input_seconds"], rest["slowest_input_seconds"]),
            "corpus_files": first["corpus_files"], "coverage": first["coverage"],
            "figures": [first["figures"], rest["figures"]]}))
    for first, rest in results.values():
        check(first, covered, RSS_GROWTH_MIB["soak"])
        check(rest, inputs - covered, RSS_GROWTH_MIB["soak"])


# ---------------------------------------------------------------- regressions

def nested(depth: int, inner: bytes = b"\x01") -> bytes:
    """msgpack of `inner` wrapped in `depth` one-element arrays."""
    return b"\x91" * depth + inner


@pytest.mark.parametrize("depth", [998, 999, 1000, 1022])
def test_a_deeply_nested_item_is_a_protocol_error(depth):
    # found by the protocol fuzzer: repr() of an item nested ~1000 deep (msgpack decodes up
    # to 1024) raised RecursionError while the error message was being written
    [item] = P.decode(nested(depth + 1))
    for parse in (P.parse_request, P.parse_response):
        with pytest.raises(ProtocolError, match=r"\[\[\[\["):
            parse(item)


def test_a_deeply_nested_field_is_a_protocol_error_naming_it():
    # [SEND, 1, "q", <body nested 1000 deep>, nil, nil, 0, nil]
    frame = b"\x91\x98\x04\x01\xa1q" + nested(1000, b"\xc4\x00") + b"\xc0\xc0\x00\xc0"
    [item] = P.decode(frame)
    with pytest.raises(ProtocolError, match="field body must be bytes"):
        P.parse_request(item)
    with pytest.raises(ProtocolError, match="unknown response op"):
        P.parse_response([[item]])


def test_error_messages_show_a_bounded_repr_of_huge_values():
    with pytest.raises(ProtocolError) as raised:
        P.parse_request([P.SEND, 1, "q", list(range(100_000)), None, None, 0, None])
    assert len(str(raised.value)) < 200 and "[0, 1, 2" in str(raised.value)


async def test_a_session_ending_while_batches_wait_their_turn_fails_no_request(caplog):
    # found by the service fuzzer: a batch waiting for the previous batch's turn was
    # cancelled when its session ended, and awaiting that turn directly cancelled it too;
    # the previous batch then failed setting it (InvalidStateError, "queue request failed")
    from fuzz.service import HostileSession

    hello = P.encode([fuzz_hello()])
    batches = P.encode([[P.FORWARD, 2, "q", 1, "fwd-1", b"f", None, 1.0, None, None],
                        [P.SETTLED, 0, 1], [P.SEND, 3, "q", b"s", None, None, 2, None]])
    async with tether.QueueManager.open(None, listen="tcp://127.0.0.1:0") as qm:
        await qm.create_queue("q")
        for rounds in range(4):      # end the session after 0..3 loop turns of its requests
            session = HostileSession([hello, batches], one_by_one=True,
                                     ending=tether.SequenceClosed("closed"), settle_rounds=rounds)
            await qm.services[0]._handle(session)
            await asyncio.sleep(0.01)
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR], rounds


async def test_requests_of_a_session_that_ends_at_once_leave_no_unawaited_coroutine():
    # found by the service fuzzer: a session ending before its requests' tasks first ran
    # left their coroutines never awaited ("RuntimeWarning: coroutine ... was never awaited")
    import gc
    import warnings

    from tether.queue.service import QueueService

    from fuzz.service import HostileSession

    hello = P.encode([fuzz_hello()])
    batches = P.encode([[P.SEND, 2, "q", b"s", None, None, 1, None], [P.SETTLED, 0, 1], [P.INFO, 3, None]])
    async with tether.QueueManager.open(None) as qm:
        await qm.create_queue("q")
        service = QueueService(qm)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            session = HostileSession([hello, batches], one_by_one=True,
                                     ending=tether.SequenceClosed("closed"), settle_rounds=0)
            await service._handle(session)
            await asyncio.sleep(0.01)
            gc.collect()
        assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in caught]


async def test_a_message_arriving_for_a_receive_just_cancelled_is_given_back():
    # found by the service soak: a receive's task cancelled (a session ending, UNSUBSCRIBE)
    # has its future cancelled at once but leaves the core's waiters only when it next runs;
    # a message arriving in between was handed to it: set_result raised InvalidStateError
    # into whoever made the message arrive (a send, a release, a consumer), with the message
    # locked for nobody
    async with tether.QueueManager.open(None) as qm:
        await qm.create_queue("q")
        waiting = asyncio.ensure_future(qm.operations.take("q", None))
        await asyncio.sleep(0)
        waiting.cancel()
        message_id = await qm.send("q", b"just then")
        with pytest.raises(asyncio.CancelledError):
            await waiting
        message = await qm.receive("q", timeout=5)
        assert (message.id, message.body, message.delivery_count) == (message_id, b"just then", 1)
        await message.complete()


@pytest.mark.parametrize("setting", ["durable", "time_to_live", "max_length", "receive_error_handling",
                                     "dead_letter_queue"])
async def test_a_deeply_nested_queue_setting_is_refused_with_a_type_or_value_error(setting):
    # found by the service soak: CREATE with a setting nested ~1000 deep (any msgpack value
    # reaches the settings) failed with RecursionError from repr() in the error message, so
    # the service answered internal-error and logged the request as failed
    deep: object = 1
    for _ in range(2000):
        deep = [deep]
    async with tether.QueueManager.open(None) as qm:
        with pytest.raises((TypeError, ValueError), match=r"\[\[\["):
            await qm.create_queue("q", **{setting: deep})
