"""Deployment profiles made real: each candidate artifact is served by a fresh child
process under the profile's limits (pinned cores, fixed threads, a memory cap), and what
that process measures decides whether the candidate fits.

- ``cgroup``: the memory cap's mechanism (cgroup v2 ``memory.max`` where this process
  may create a child cgroup with the memory controller, else ``RLIMIT_AS``) - parent side.
- ``child``: the serving process itself (``python -m quantexp.deployment.child``):
  applies the limits, loads the artifact, answers requests, writes what it measured.
- ``runner``: starts the child(ren) for one candidate and one profile, turns a crash or
  a broken cap into a measurement, never into an exception.
- ``verdict``: fits / does not fit, with the reasons, from a measurement and a profile.

Kept light at import: the child imports this package and must start as a bare
interpreter plus its one runtime library.
"""
