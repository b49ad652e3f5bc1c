"""``python -m quantexp <command> [args]``: the ``quantexp`` console command without the
entry point installed (same as ``quantexp run ...`` / ``python run.py ...``)."""

from quantexp.cli import main

if __name__ == "__main__":
    main()
