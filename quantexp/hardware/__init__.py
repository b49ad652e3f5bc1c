"""Hardware targets: what this host offers (probe) and whether a target can run here."""

from quantexp.hardware.probe import HardwareUnavailable, HostInfo, probe_host, require_available

__all__ = ["HardwareUnavailable", "HostInfo", "probe_host", "require_available"]
