"""The Host check: a guard against DNS rebinding.

A browser page on another origin can resolve its own name to 127.0.0.1 and
then talk to a loopback agent; its requests still carry the attacker's name
in ``Host``. The agent answers only Host names that are loopback names, its
configured ``host``, or ``server.allowed_hosts`` (for proxies and Services),
and gives everything else a 421. Pure functions; the edge middleware applies them.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})


_HOST = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9_.-]+))(?::(?P<port>[0-9]{1,5}))?")
"""RFC 9110 ``Host``: a name or an IP literal, then at most a port; nothing else (no userinfo, path or fragment)."""


def host_name(header: str) -> str:
    """The name in a Host header, lowercased, without port, brackets or a trailing dot; "" when malformed.

    ``127.0.0.1:7860@evil.example``, ``localhost:7860/evil``, ``localhost:1#x`` and
    ``127.0.0.1:99999`` are malformed: they must not pass as their loopback prefix.
    """
    text = header.strip().lower()
    found = _HOST.fullmatch(text)
    if found is None:
        try:  # a bare IPv6 address, without brackets or port
            return str(ipaddress.IPv6Address(text))
        except ValueError:
            return ""
    if found["port"] is not None and not 0 < int(found["port"]) <= 65535:
        return ""
    return found["v6"] or found["name"].rstrip(".")


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
        if header is None:
            return True
        name = host_name(header)
        if not name:
            return False
        return self.anything or name in self.names or any(name.endswith(s) for s in self.suffixes)
