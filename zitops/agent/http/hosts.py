"""The Host check: a guard against DNS rebinding.

A browser page on another origin can resolve its own name to 127.0.0.1 and
then talk to a loopback agent; its requests still carry the attacker's name
in ``Host``. The agent answers only Host names that are loopback names, its
configured ``host``, or ``server.allowed_hosts`` (for proxies and Services),
and gives everything else a 421. Pure functions; the edge middleware applies them.
"""

from __future__ import annotations

from dataclasses import dataclass

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})


def host_name(header: str) -> str:
    """The name in a Host header, lowercased, without port, brackets or a trailing dot."""
    text = header.strip().lower()
    if text.startswith("["):
        name, _, _ = text[1:].partition("]")
        return name
    if text.count(":") == 1:
        text = text.partition(":")[0]
    return text.rstrip(".")


@dataclass(frozen=True)
class HostPolicy:
    """Which Host names the agent answers."""

    names: frozenset[str]
    suffixes: tuple[str, ...] = ()
    anything: bool = False

    @classmethod
    def from_settings(cls, bind_host: str, allowed: list[str] | tuple[str, ...]) -> HostPolicy:
        """Loopback names, the bind address (unless a wildcard) and ``server.allowed_hosts``."""
        names = set(LOOPBACK_NAMES)
        if bind_host.lower() not in WILDCARD_BINDS:
            names.add(host_name(bind_host))
        suffixes: list[str] = []
        anything = False
        for entry in allowed:
            entry = entry.strip().lower()
            if entry == "*":
                anything = True
            elif entry.startswith("*."):
                suffixes.append(entry[1:])
            elif entry:
                names.add(host_name(entry))
        return cls(frozenset(names), tuple(suffixes), anything)

    def allows(self, header: str | None) -> bool:
        """True when a request with this Host header may be served (no header: not from a browser)."""
        if header is None or self.anything:
            return True
        name = host_name(header)
        return name in self.names or any(name.endswith(s) for s in self.suffixes)
