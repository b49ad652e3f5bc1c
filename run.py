"""quantexp entry point: compose the Hydra config, run one experiment, return its objectives.

Kept thin on purpose: everything heavy is imported inside ``main`` so that
``python run.py --help`` and ``--cfg job`` start fast.
"""

import sys
import warnings

import hydra
from omegaconf import DictConfig

from quantexp.config import register_configs

register_configs()
# Hydra 1.4rc3 warns on every run that hydra.callbacks targets are instantiated
# without an execution whitelist; the only target is our own MLflow callback.
warnings.filterwarnings("ignore", message=r"hydra\.utils\.instantiate\(\) resolved _target_='quantexp\.")


@hydra.main(config_path="conf", config_name="config")
def main(cfg: DictConfig):
    from quantexp.cli import run_job

    return run_job(cfg)


if __name__ == "__main__":
    status = main()
    # A precision search whose budget no trial meets ends non-zero (quantexp.search).
    from quantexp.search import EXIT

    sys.exit(status or EXIT.code)
