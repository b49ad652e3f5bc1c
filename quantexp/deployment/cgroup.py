"""The memory cap's mechanism, chosen in the parent before the child starts.

cgroup v2 ``memory.max`` is the real thing (the kernel charges every page the child
touches, reclaims or OOM-kills at the cap): used when this process's own v2 cgroup
offers the memory controller and a child cgroup with ``memory.max`` can be created
(root, or a delegated subtree). Otherwise the child sets ``RLIMIT_AS`` on itself (see
``quantexp.deployment.child``), and the reason cgroup v2 was not used is recorded.
Nothing here touches cgroup v1 hierarchies or any cgroup but a new child of our own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_V2 = "cgroup v2 memory.max"
RLIMIT_AS = "RLIMIT_AS"


@dataclass
class MemoryCap:
    mechanism: str          # CGROUP_V2 | RLIMIT_AS | "none"
    reason: str             # why this mechanism (why not cgroup v2)
    cgroup: str | None = None  # the child cgroup's folder (cgroup v2)

    def release(self) -> None:
        """Remove the child cgroup (empty once the child process is gone)."""
        if self.cgroup:
            try:
                os.rmdir(self.cgroup)
            except OSError:
                pass


def v2_mount(mounts_text: str) -> str | None:
    """Mount point of the cgroup v2 hierarchy from the text of /proc/mounts."""
    for line in mounts_text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "cgroup2":
            return parts[1]
    return None


def own_v2_path(proc_cgroup_text: str) -> str | None:
    """This process's path in the v2 hierarchy ("0::/path" line of /proc/self/cgroup)."""
    for line in proc_cgroup_text.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def prepare(cap_mb: int | None, name: str, proc: Path = Path("/proc")) -> MemoryCap:
    """A cap of ``cap_mb`` MiB for a child that is about to start (None: no cap)."""
    if cap_mb is None:
        return MemoryCap("none", "the profile sets no memory cap")
    mount = v2_mount(_read(proc / "mounts"))
    rel = own_v2_path(_read(proc / "self" / "cgroup"))
    if mount is None or rel is None:
        return MemoryCap(RLIMIT_AS, "no cgroup v2 hierarchy is mounted")
    own = Path(mount) / rel.lstrip("/")
    controllers = _read(own / "cgroup.controllers").split()
    if "memory" not in controllers:
        return MemoryCap(RLIMIT_AS, f"the cgroup v2 hierarchy at {own} offers no memory controller "
                                    f"(controllers: {', '.join(controllers) or 'none'}; cgroup v1 holds it)")
    child = own / name
    try:
        if "memory" not in _read(own / "cgroup.subtree_control").split():
            (own / "cgroup.subtree_control").write_text("+memory")
        child.mkdir()
        (child / "memory.max").write_text(str(cap_mb * 2**20))
        if (child / "memory.swap.max").exists():
            (child / "memory.swap.max").write_text("0")  # swap would hide the overrun
    except OSError as exc:
        MemoryCap(RLIMIT_AS, "", str(child)).release()
        return MemoryCap(RLIMIT_AS, f"cannot create a cgroup v2 child with memory.max under {own}: "
                                    f"{exc.strerror or exc}")
    return MemoryCap(CGROUP_V2, f"child cgroup {child}", str(child))


__all__ = ["CGROUP_V2", "RLIMIT_AS", "MemoryCap", "own_v2_path", "prepare", "v2_mount"]
