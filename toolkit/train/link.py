"""The links between the tiers, shaped by the kernel: `python -m toolkit.train.link CONFIG MODE`.

Run under `unshare --net` (a private network namespace made for the run: only its own
loopback, nothing leaves it, and it disappears with its last process), this shapes the
loopback per boundary and direction and starts one process per tier. The recipe, measured on
this kind of machine (issue 15):

- `lo` at MTU 1500 with `gso_max_size 1500`, so the shaper sees wire-sized packets;
- an HTB root with two classes per boundary — up for packets to the later tier's port, down
  for packets from it (`u32` filters) — `pfifo` leaves, and a 10 Gbit/s default class for
  everything else;
- `stab overhead -66`: HTB then counts payload only (a TCP segment of 1448 bytes travels with
  66 bytes of Ethernet, IP and TCP headers), so the shaped rate is the rate the delay model
  divides bytes by;
- `net.ipv4.tcp_slow_start_after_idle=0`, so each message starts at full window after the
  idle gap of an iteration.

One-way latency cannot come from netem here (not in this kernel): each sender waits the
link's latency before each message (`Link.latency_ms`). With `--paced` (no root, no
namespaces) the peers run on the host's loopback and each sender paces itself instead.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

from toolkit.train.peer import Link, PeerConfig

_PR_SET_PDEATHSIG = 1
CPU_CGROUP = Path("/sys/fs/cgroup/cpu")  # the cgroup v1 cpu controller
_PERIOD_US = 100_000


class CpuLimitError(RuntimeError):
    """The kernel cannot limit a process's CPU here."""


@contextmanager
def cpu_limit(fraction: float, pids: Sequence[int] = ()) -> Iterator[None]:
    """Run `pids` (default: this process) together on `fraction` of one CPU for the block: a
    CFS quota of their own cgroup (quota/period), so a slower device is emulated by the
    kernel's scheduler, not by sleeps (a U-shape's device head and tail share the one
    device). Their threads and children started inside inherit the group.

    The quota is a token bucket refilled every period: after an idle gap a burst runs a whole
    quota at full speed before it is throttled. Measured here at a quarter of a CPU: with the
    100 ms period a 10 ms burst after an idle gap runs at full speed, 30 ms 1.8x slower and
    100 ms 3.5x; shorter periods throttle short bursts too (a 10 ms one 3.0x slower with a
    10 ms period, 3.4x with 4 ms) but cost memory-heavy work 25-50% more than the quota
    (GPT-2 on the device alone ran 6x slower than full speed with a 4 ms period, not 4x), and
    made the whole-iteration error of docs/fidelity.md worse (16% with 10 ms, against 7%).
    So the period stays 100 ms, and docs/fidelity.md says where that shows."""
    if not fraction > 0:
        raise CpuLimitError(f"a CPU fraction must be above 0, not {fraction:g}")
    if not (CPU_CGROUP / "cpu.cfs_quota_us").exists():
        raise CpuLimitError(f"no cgroup v1 cpu controller at {CPU_CGROUP}")
    targets = list(pids) or [os.getpid()]
    homes = {pid: _cgroup_of(pid) for pid in targets}
    _remove_stale_groups()
    group = CPU_CGROUP / f"splitcut-{os.getpid()}-{targets[0]}"
    group.mkdir(exist_ok=True)
    try:
        (group / "cpu.cfs_period_us").write_text(str(_PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(max(1000, int(_PERIOD_US * fraction))))
        for pid in targets:
            (group / "cgroup.procs").write_text(str(pid))
        yield
    finally:
        for pid, home in homes.items():
            with suppress(OSError):  # (the process may have ended)
                (home / "cgroup.procs").write_text(str(pid))
        for _ in range(50):  # an exiting process leaves the group a moment later
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.02)


def _remove_stale_groups() -> None:
    """Remove the (empty) groups of runs whose process was killed before it could."""
    for group in CPU_CGROUP.glob("splitcut-*-*"):
        creator = group.name.split("-")[1]
        if creator.isdigit() and not Path(f"/proc/{creator}").exists():
            with suppress(OSError):  # still holds a process: leave it
                group.rmdir()


def _cgroup_of(pid: int) -> Path:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return CPU_CGROUP / path.lstrip("/")
    return CPU_CGROUP


def shaping_commands(ports: list[int], links: list[Link]) -> list[list[str]]:
    """ip/tc/sysctl commands that shape the namespace's loopback for one run: per boundary b,
    packets to `ports[b]` (towards the later tier) at its up rate, packets from it at its
    down rate."""
    def rate(bps: float) -> str:
        return f"{max(int(bps), 8)}bit"

    commands = [
        ["ip", "link", "set", "dev", "lo", "up"],
        ["ip", "link", "set", "dev", "lo", "mtu", "1500"],
        ["ip", "link", "set", "dev", "lo", "gso_max_size", "1500"],
        ["tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "stab", "overhead", "-66",
         "linklayer", "ethernet", "htb", "default", "1", "r2q", "1000"],
        ["tc", "class", "add", "dev", "lo", "parent", "1:", "classid", "1:1", "htb", "rate",
         "10gbit", "quantum", "60000"],
    ]
    for b, (port, link) in enumerate(zip(ports, links, strict=True)):
        for minor, bps, match in ((0x10 + 2 * b, link.up_bps, "dport"),
                                  (0x11 + 2 * b, link.down_bps, "sport")):
            commands += [
                ["tc", "class", "add", "dev", "lo", "parent", "1:", "classid", f"1:{minor:x}",
                 "htb", "rate", rate(bps), "quantum", "1514"],
                ["tc", "qdisc", "add", "dev", "lo", "parent", f"1:{minor:x}", "handle",
                 f"{minor:x}:", "pfifo", "limit", "100000"],
                ["tc", "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio",
                 "1", "u32", "match", "ip", match, str(port), "0xffff", "flowid",
                 f"1:{minor:x}"],
            ]
    return [*commands, ["sysctl", "-qw", "net.ipv4.tcp_slow_start_after_idle=0"]]


def _die_with_parent() -> None:
    """Children get SIGKILL when this runner dies, so no peer outlives a run."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def run_peers(config_path: str, shape: bool) -> int:
    """Shape the links (when `shape`), run one process per tier, and end all when one fails."""
    config = PeerConfig.load(config_path)
    if shape:
        for command in shaping_commands(config.ports, config.links):
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                reason = (done.stderr.strip().splitlines() or ["failed"])[-1]
                print(f"splitcut train: cannot shape the link ({' '.join(command[:4])}...: "
                      f"{reason})", file=sys.stderr)
                return 3
    peers = []
    roles = [tier.name for tier in config.tiers]
    for t in reversed(range(len(roles))):  # listeners first
        peers.append(subprocess.Popen(
            [sys.executable, "-m", "toolkit.train.peer", str(t), roles[t], config_path],
            preexec_fn=_die_with_parent))
    peers.reverse()
    try:
        with ExitStack() as limits:
            for share in config.cpu:
                limits.enter_context(cpu_limit(share.fraction, [peers[t].pid for t in share.tiers]))
            return _wait(peers, roles)
    except CpuLimitError as exc:
        print(f"splitcut train: cannot slow a tier down: {exc}", file=sys.stderr)
        return 3
    finally:
        for p in peers:
            if p.poll() is None:
                p.kill()
            p.wait()


def _wait(peers: list[subprocess.Popen[bytes]], roles: list[str]) -> int:
    """Until every peer ends well, or one fails (the others then have 5 s to say why)."""
    while not all(p.poll() == 0 for p in peers):
        failed = [(role, p) for role, p in zip(roles, peers, strict=True)
                  if p.poll() not in (None, 0)]
        if failed:
            role, peer = failed[0]
            code = peer.returncode
            if code < 0:
                print(f"splitcut train: the {role} peer was killed by signal {-code}",
                      file=sys.stderr)
            grace = time.monotonic() + 5  # the other side notices and says why, or ends
            while any(p.poll() is None for p in peers) and time.monotonic() < grace:
                time.sleep(0.05)
            for other, q in zip(roles, peers, strict=True):
                if q.poll() is None:
                    print(f"splitcut train: the {other} peer was stopped", file=sys.stderr)
            return code if code > 0 else 128 - code
        time.sleep(0.05)
    return 0


def main(argv: list[str]) -> int:
    config_path, mode = argv
    return run_peers(config_path, mode == "shaped")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
