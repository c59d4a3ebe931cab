"""A small measuring script (issue 11, item 1; not `tether bench`): tether UDP and TCP
sessions and raw uvloop TCP (msgpack batches, no acks: the same-run baseline) between two
network namespaces joined by a veth pair with MTU 1500, sender and receiver in separate
processes (veth_peer.py), through tether.serve/tether.connect, window 4096, each row for
--seconds. --loss P drops P of the packets arriving in each namespace (iptables
statistic); --lo runs the same on loopback without namespaces. Root only; the namespaces
(s11r, s11s) are removed afterwards. PYSPY=dir records py-spy profiles of both sides.

    sudo PYTHONPATH=src python benchmarks/veth_udp.py [--loss 0.05] [--rows udp:1024,tcp:1024]"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
NS_R, NS_S = "s11r", "s11s"
IP_R, IP_S = "10.211.1.1", "10.211.1.2"


def sh(cmd, check=True):
    return subprocess.run(cmd, shell=True, check=check, capture_output=True, text=True)


def setup(loss):
    teardown()
    sh(f"ip netns add {NS_R}; ip netns add {NS_S}")
    sh("ip link add s11v0 type veth peer name s11v1")
    sh(f"ip link set s11v0 netns {NS_R}; ip link set s11v1 netns {NS_S}")
    for ns, dev, ip in ((NS_R, "s11v0", IP_R), (NS_S, "s11v1", IP_S)):
        sh(f"ip netns exec {ns} ip addr add {ip}/24 dev {dev}")
        sh(f"ip netns exec {ns} ip link set {dev} mtu 1500 up")
        sh(f"ip netns exec {ns} ip link set lo up")
        if loss:
            sh(f"ip netns exec {ns} iptables -A INPUT -i {dev} -m statistic --mode random --probability {loss} -j DROP")


def teardown():
    sh(f"ip netns del {NS_R}", check=False)
    sh(f"ip netns del {NS_S}", check=False)


def row(proto, size, seconds, window, port, lo=False):
    env = dict(os.environ)
    py = sys.executable
    host = "127.0.0.1" if lo else IP_R
    pre_r = "" if lo else f"ip netns exec {NS_R} "
    pre_s = "" if lo else f"ip netns exec {NS_S} "
    spy = os.environ.get("PYSPY")
    def wrap(mode):
        return f"py-spy record -r 200 -f raw -o {spy}/{proto}{size}-{mode}.txt -- " if spy else ""
    peer_args = f"{proto} {host} {port} {size} {seconds} {window}"
    r = subprocess.Popen(f"{pre_r}{wrap('recv')}{py} {HERE}/veth_peer.py recv {peer_args}",
                         shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    while True:
        line = r.stdout.readline()
        if not line:
            r.kill()
            raise RuntimeError(r.stderr.read())
        if line.strip() == "READY":
            break
    s = subprocess.run(f"{pre_s}{wrap('send')}{py} {HERE}/veth_peer.py send {peer_args}",
                       shell=True, capture_output=True, text=True, env=env, timeout=seconds * 20 + 60)
    try:
        out_r, err_r = r.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        r.kill()
        out_r, err_r = r.communicate()
    try:
        snd = json.loads([line for line in s.stdout.splitlines() if line.startswith("{")][-1])
        rcv = json.loads([line for line in out_r.splitlines() if line.startswith("{")][-1])
    except Exception:
        print("FAILED", proto, size, s.stdout, s.stderr[-3000:], out_r, err_r[-3000:])
        return None
    rate = snd["sent"] / snd["elapsed"]
    return dict(proto=proto, size=size, rate=rate, snd=snd, rcv=rcv)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loss", type=float, default=0.0)
    ap.add_argument("--rows", default="raw:64,udp:64,tcp:64,raw:1024,udp:1024,tcp:1024")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--window", type=int, default=4096)
    ap.add_argument("--lo", action="store_true", help="loopback, separate processes, no namespaces")
    a = ap.parse_args()
    if not a.lo:
        setup(a.loss)
    try:
        port = 19000 + os.getpid() % 1000
        base = {}
        for spec in a.rows.split(","):
            proto, size = spec.split(":")
            port += 1
            res = row(proto, int(size), a.seconds, a.window, port, a.lo)
            if res is None:
                continue
            if proto == "raw":
                base[int(size)] = res["rate"]
            b = base.get(int(size))
            ratio = f"{res['rate'] / b:.2f}x raw" if b else ""
            snd, rcv = res["snd"], res["rcv"]
            rtt_ms = snd.get("rtt") and round(snd["rtt"] * 1e3, 2)
            print(f"{'lo' if a.lo else 'veth'} loss={a.loss:g} {proto:4} {size:5}B {res['rate']:>12,.0f} msgs/s "
                  f"{ratio:10} resent={snd.get('resent')} t={snd['elapsed']:.2f}s cpu s/r={snd['cpu']}/{rcv['cpu']} "
                  f"pk={snd.get('pk')} fr={snd.get('fr')} rto={snd.get('rto')} cwnd={snd.get('cwnd')} rtt={rtt_ms}ms "
                  f"dups={rcv.get('dups')} refused={rcv.get('refused')}", flush=True)
    finally:
        if not a.lo:
            teardown()


main()
