"""How the jobs of a sweep run, whatever Hydra launcher starts them (basic, joblib, Ray).

- ``isolation``: one job in a fresh process (fork server), its result or exception
  sent back; a process that dies is ``JobCrashed``, one FAILED job.
- ``placement``: the launcher, how many jobs may share this host, the intra-op threads
  each job gets (jobs x threads <= cores) and whether its latencies were measured
  under co-location.
- ``job``: ``run_sweep_job``, what ``quantexp.cli`` calls for each job of a multirun.

Imported by ``quantexp.cli`` only when a multirun job starts; nothing heavy at import.
"""
