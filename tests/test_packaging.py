"""Installing tether as a user does: `python -m build` makes an sdist and a binary wheel
with the compiled core; a source install without a C compiler falls back to the
pure-Python twins with one warning; the `tether` command runs without uvloop.

The builds run without build isolation (the test extra installs setuptools, Cython and
build), from a copy of the checkout without any earlier build output in it."""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

import tether
from tether import layer1

ROOT = pathlib.Path(__file__).resolve().parent.parent
NATIVE_MODULES = sorted(layer1.NAMES)


def _checkout_copy(into: pathlib.Path) -> pathlib.Path:
    """The files a source distribution is made from, without build output (.so, .c,
    build/): a compile that fails must not find objects of an earlier one."""
    copy = into / "tether-src"
    ignore = shutil.ignore_patterns("*.so", "*.c", "__pycache__", "*.egg-info", ".mypy_cache", ".ruff_cache")
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, copy / name if copy.exists() else _mkdir(copy) / name)
    for name in ("src", "ext", "docs"):
        shutil.copytree(ROOT / name, copy / name, ignore=ignore)
    return copy


def _mkdir(path: pathlib.Path) -> pathlib.Path:
    path.mkdir(parents=True)
    return path


def _run(args: list[str], cwd: pathlib.Path, **env: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=900,
                            env=os.environ | env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _install(wheel: pathlib.Path, target: pathlib.Path) -> None:
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
         wheel.parent, CC="/bin/false")


def _python_in(target: pathlib.Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `code` with the tether installed in `target` (ahead of any other on the path)."""
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TETHER_PUREPYTHON")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=target.parent, env=environment | {"PYTHONPATH": str(target)} | env)


SMOKE = """
import asyncio, tether
assert tether.__file__.startswith({target!r}), tether.__file__
async def main():
    async with tether.serve(None, "udp://127.0.0.1:0") as server:
        async with tether.connect(server.url_bound) as client:
            peer = await server.accept()
            await client.send(b"over the wire")
            assert await peer.recv() == b"over the wire"
asyncio.run(main())
print("NATIVE", tether.NATIVE)
"""


@pytest.mark.slow
@pytest.mark.timeout(600)      # Cython runs for real; on a loaded 2-core machine that takes minutes
def test_without_a_compiler_the_install_falls_back_to_the_twins(tmp_path):
    source = _checkout_copy(tmp_path)
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-v",
                  "-w", str(tmp_path / "dist"), str(source)], tmp_path, CC="/bin/false", TETHER_EXT="")
    output = built.stdout + built.stderr
    assert output.count("WARNING: tether's C extensions could not be compiled") == 1, output[-3000:]
    wheel, = (tmp_path / "dist").glob("tether-*.whl")
    assert not [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".so")]
    target = tmp_path / "site"
    _install(wheel, target)

    ran = _python_in(target, SMOKE.format(target=str(target)))
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split()[-2:] == ["NATIVE", "False"]
    assert ran.stderr.count(": RuntimeWarning: ") == 1, ran.stderr
    assert "pure-Python twins" in ran.stderr and "TETHER_PUREPYTHON=1" in ran.stderr

    chosen = _python_in(target, SMOKE.format(target=str(target)), TETHER_PUREPYTHON="1")
    assert chosen.returncode == 0 and "RuntimeWarning" not in chosen.stderr, chosen.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)      # Cython and the C compiler run for real
def test_build_makes_an_sdist_and_a_binary_wheel(tmp_path):
    source = _checkout_copy(tmp_path)
    dist = tmp_path / "dist"
    built = _run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel", "--outdir", str(dist),
                  str(source)], tmp_path)
    output = built.stdout + built.stderr
    assert "Deprecat" not in output, output[-3000:]
    assert "could not be compiled" not in output, output[-3000:]

    sdist, = dist.glob("tether-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for needed in ("LICENSE", "setup.py", "pyproject.toml", "src/tether/py.typed",
                   *(f"ext/{m}.pyx" for m in NATIVE_MODULES),
                   *(f"src/tether/_reference/{m}.py" for m in NATIVE_MODULES)):
        assert needed in names, needed
    assert not [n for n in names if n.endswith(".so")]

    wheel, = dist.glob("tether-*.whl")
    assert "-linux_" in wheel.name or "-macosx_" in wheel.name or "-win" in wheel.name  # a binary wheel
    archive = zipfile.ZipFile(wheel)
    contents = archive.namelist()
    compiled = sorted(n.split("/")[-1].split(".")[0] for n in contents if n.startswith("tether/_native/")
                      and n.endswith((".so", ".pyd")))
    assert compiled == NATIVE_MODULES
    assert "tether/py.typed" in contents
    metadata = archive.read(next(n for n in contents if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in metadata
    assert "Requires-Dist: uvloop>=0.19; sys_platform != \"win32\"" in metadata
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in contents)

    target = tmp_path / "site"
    _install(wheel, target)       # CC=/bin/false: nothing is compiled at install
    ran = _python_in(target, SMOKE.format(target=str(target)))
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split()[-2:] == ["NATIVE", "True"]
    assert "Warning" not in ran.stderr, ran.stderr


def test_the_license_is_mit():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "tether authors" in text


BLOCK_UVLOOP = "import sys; sys.modules['uvloop'] = None\n"


def test_the_loop_runner_falls_back_to_asyncio_without_uvloop():
    code = BLOCK_UVLOOP + (
        "import asyncio\n"
        "from tether.runner import new_loop_runner\n"
        "run = new_loop_runner()\n"
        "assert run is asyncio.run, run\n"
        "async def loop_type():\n"
        "    return type(asyncio.get_running_loop()).__module__\n"
        "print(run(loop_type()))\n")
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip().startswith("asyncio"), ran.stdout


async def test_the_tether_command_works_without_uvloop(tmp_path):
    manager = await tether.QueueManager.open(None, listen="tcp://127.0.0.1:0")
    try:
        await manager.create_queue("orders")
        url = f"tether://127.0.0.1:{manager.services[0].address[1]}/orders"
        code = BLOCK_UVLOOP + "from tether.cli import main\nsys.exit(main(sys.argv[1:]))\n"
        process = await asyncio_subprocess(sys.executable, "-c", code, "send", url, "without uvloop")
        assert process[0] == 0, process
        message = await manager.receive("orders", timeout=5)
        assert message is not None and message.body == b"without uvloop"
        await message.complete()
    finally:
        await manager.close()


async def asyncio_subprocess(*args: str) -> tuple[int, str]:
    import asyncio

    process = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode if process.returncode is not None else -1, output.decode()


def test_tether_native_is_what_layer1_chose():
    assert tether.NATIVE is layer1.NATIVE
    assert ("tether._native" if layer1.NATIVE else "tether._reference") == layer1.PACKAGE
