"""quantexp entry point: ``python run.py [overrides]`` (the same as ``quantexp run``).

Kept thin on purpose: the Hydra app lives in ``quantexp.cli``, and everything heavy
is imported inside the job so that ``--help`` and ``--cfg job`` start fast.
"""

from quantexp.cli import run_main

if __name__ == "__main__":
    run_main()
