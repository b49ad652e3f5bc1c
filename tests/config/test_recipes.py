"""Recipes (conf/experiment/*.yaml): every job of every recipe's sweep composes into a
valid, compatible experiment - the check Hydra's sweeper would only reach job by job."""

from __future__ import annotations

import itertools

import pytest
from hydra import compose, initialize_config_dir

from quantexp.api import CONF_DIR, register, validate

RECIPES = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def _sweep_jobs(recipe: str) -> list[list[str]]:
    """The override lists the basic sweeper would launch for ``-m +experiment=<recipe>``."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="config", overrides=[f"+experiment={recipe}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params or {}
    axes = [[f"{key}={value}" for value in str(values).split(",")] for key, values in params.items()]
    return [[f"+experiment={recipe}", *combo] for combo in itertools.product(*axes)]


def test_the_readme_recipes_exist():
    assert {"ptq_vs_qat_w4", "families", "bnb_engines", "ort_engines", "exporters"} <= set(RECIPES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_job_of_a_recipe_is_a_valid_experiment(recipe):
    register()
    jobs = _sweep_jobs(recipe)
    assert len(jobs) >= 3, "a recipe is a sweep"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        for overrides in jobs:
            exp = validate(compose(config_name="config", overrides=overrides))
            for override in overrides[1:]:
                group, name = override.split("=")
                assert getattr(exp, group).name == name, override


def test_the_ptq_vs_qat_recipe_is_the_readme_study():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        exp = validate(compose(config_name="config", overrides=["+experiment=ptq_vs_qat_w4", "method=qat"]))
    assert exp.model.channels == [4, 8] and exp.model.hidden == 16 and exp.model.epochs == 10
    assert exp.precision.name == "w4a8_tensor"
