"""Network namespaces for partition tests: a veth pair on a private /30, iptables cuts, curl inside.

:class:`NetNs` makes one namespace joined to the root namespace by a veth
pair with private addresses (10.200-254.x.y/30, picked so it overlaps no
route of this machine). The namespace has only that link and its loopback,
and no default route, so nothing in it can reach past the root namespace's
end of the pair, and nothing is ever routed off the machine.

:meth:`NetNs.cut` inserts iptables rules on the root namespace's end of the
pair (DROP: packets vanish and connections go half-open, as a switch or a
security group does it; REJECT: the peer hears at once). Every name (the
namespace, the two interfaces, the rules' interface match) is unique per
instance, and :meth:`NetNs.remove` (the ``netns`` fixture's finalizer)
deletes the rules, the pair and the namespace whatever the test did.

:meth:`NetNs.http` runs curl inside the namespace, so a test talks to an
agent there on 127.0.0.1 as a sidecar or kubelet would.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import random
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

Cut = Literal["DROP", "REJECT"]
_INSTALL = "apt-get install -y iproute2 iptables curl (.ci/run does this)"


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and done.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def _free_subnet() -> ipaddress.IPv4Network:
    """A private /30 in 10.200.0.0-10.254.255.255 that no route or address of this machine overlaps."""
    used = []
    for line in _run("ip", "-4", "-o", "route", "show", "table", "all").stdout.splitlines():
        with contextlib.suppress(ValueError):
            used.append(ipaddress.ip_network(line.split()[0] if line.split()[0] != "local" else line.split()[1],
                                             strict=False))
    for line in _run("ip", "-4", "-o", "addr").stdout.splitlines():
        with contextlib.suppress(ValueError, IndexError):
            used.append(ipaddress.ip_network(line.split()[3], strict=False))
    rng = random.Random()
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{rng.randint(200, 254)}.{rng.randint(0, 255)}.{rng.randrange(0, 256, 4)}/30")
        if not any(net.overlaps(u) for u in used if not u.is_unspecified and u.prefixlen):
            return net
    raise RuntimeError("no free private /30 in 10.200.0.0/16-10.254.0.0/16")


@dataclass
class Response:
    """What curl got: status (0: no answer within the timeout), headers (lower-case), body, seconds taken."""

    status: int
    headers: dict[str, str]
    body: str
    seconds: float

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


@dataclass
class NetNs:
    """One namespace, its veth pair and the iptables rules a test added (see the module docstring)."""

    name: str = field(default_factory=lambda: f"zt{uuid.uuid4().hex[:8]}")
    subnet: ipaddress.IPv4Network = field(default_factory=_free_subnet)
    rules: list[tuple[str, ...]] = field(default_factory=list)

    @property
    def host_if(self) -> str:
        """The root namespace's end of the pair (iptables matches it)."""
        return f"{self.name}h"

    @property
    def ns_if(self) -> str:
        """The namespace's end of the pair."""
        return f"{self.name}n"

    @property
    def host_ip(self) -> str:
        """The root namespace's address on the pair (PostgreSQL listens here)."""
        return str(self.subnet.network_address + 1)

    @property
    def ns_ip(self) -> str:
        """The namespace's address on the pair."""
        return str(self.subnet.network_address + 2)

    def create(self) -> NetNs:
        """Make the namespace and the pair, addresses up; ``remove`` undoes a half-made one too."""
        prefix = self.subnet.prefixlen
        _run("ip", "netns", "add", self.name)
        _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if, "netns", self.name)
        _run("ip", "addr", "add", f"{self.host_ip}/{prefix}", "dev", self.host_if)
        _run("ip", "link", "set", self.host_if, "up")
        self.exec("ip", "addr", "add", f"{self.ns_ip}/{prefix}", "dev", self.ns_if)
        self.exec("ip", "link", "set", self.ns_if, "up")
        self.exec("ip", "link", "set", "lo", "up")
        return self

    def argv(self, *argv: str) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def exec(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the namespace; raise when it fails."""
        return _run(*self.argv(*argv))

    def cut(self, mode: Cut) -> None:
        """Cut the pair both ways with ``mode`` (DROP: half-open connections; REJECT: refused at once)."""
        target = ["REJECT", "--reject-with", "tcp-reset"] if mode == "REJECT" else ["DROP"]
        tcp = ["-p", "tcp"] if mode == "REJECT" else []
        for rule in (("INPUT", "-i", self.host_if, *tcp, "-j", *target),
                     ("OUTPUT", "-o", self.host_if, *tcp, "-j", *target)):
            _run("iptables", "-w", "5", "-I", *rule)
            self.rules.append(rule)

    def cut_port(self, mode: Cut, port: int, server: Literal["root", "ns"]) -> None:
        """Cut only TCP connections to ``port`` on the ``server`` side (an asymmetric partition).

        ``server="root"``: the namespace cannot reach a server of the root namespace (PostgreSQL) on
        ``port``; ``server="ns"``: nobody outside reaches the namespace's server (the agent) on ``port``.
        Everything else on the pair still flows.
        """
        target = ["REJECT", "--reject-with", "tcp-reset"] if mode == "REJECT" else ["DROP"]
        towards, back = ("--dport", "--sport") if server == "root" else ("--sport", "--dport")
        for rule in (("INPUT", "-i", self.host_if, "-p", "tcp", towards, str(port), "-j", *target),
                     ("OUTPUT", "-o", self.host_if, "-p", "tcp", back, str(port), "-j", *target)):
            _run("iptables", "-w", "5", "-I", *rule)
            self.rules.append(rule)

    def heal(self) -> None:
        """Delete every rule :meth:`cut` added."""
        while self.rules:
            rule = self.rules.pop()
            _run("iptables", "-w", "5", "-D", *rule, check=False)

    def remove(self) -> None:
        """Rules, pair and namespace gone (each step even when an earlier one failed)."""
        self.heal()
        _run("ip", "link", "del", self.host_if, check=False)
        _run("ip", "netns", "del", self.name, check=False)

    def http(self, method: str, url: str, *, body: Any = None, headers: dict[str, str] | None = None,
             timeout_s: float = 2.0) -> Response:
        """One HTTP request by curl inside the namespace; status 0 when no answer came within ``timeout_s``."""
        argv = ["curl", "-sS", "-X", method, "-m", f"{timeout_s:g}", "-D", "/dev/stderr", "-o", "/dev/stdout"]
        for key, value in (headers or {}).items():
            argv += ["-H", f"{key}: {value}"]
        if body is not None:
            argv += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
        start = time.monotonic()
        done = subprocess.run(self.argv(*argv, url), capture_output=True, text=True, timeout=timeout_s + 10)
        seconds = time.monotonic() - start
        status, found = 0, dict[str, str]()
        for line in done.stderr.splitlines():
            if line.startswith("HTTP/"):
                status, found = int(line.split()[1]), dict[str, str]()
            elif ":" in line:
                key, _, value = line.partition(":")
                found[key.strip().lower()] = value.strip()
        return Response(status if done.returncode == 0 else 0, found, done.stdout, seconds)


@pytest.fixture
def netns() -> Iterator[NetNs]:
    """A fresh namespace and veth pair for one test; rules, pair and namespace removed afterwards."""
    for tool in ("ip", "iptables", "curl"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: {_INSTALL}", pytrace=False)
    ns = NetNs()
    try:
        yield ns.create()
    finally:
        ns.remove()
