"""Two processes that start one mixed-precision study together both find it empty, and
each offers the choices its own kernel timings gave; whichever writes a parameter first
defines it for the study. The later one must take those choices, not crash (Optuna:
"CategoricalDistribution does not support dynamic value space"). A real Optuna study in a
journal file, written through two storages as two processes do; the interleaving is
forced by having the other process write while this one measures its own choices."""

from __future__ import annotations

import optuna
from hydra import compose, initialize_config_dir
from optuna.storages.journal import JournalFileBackend, JournalStorage

from quantexp.api import CONF_DIR, register
from quantexp.search import space


def test_a_parameter_written_first_by_another_process_keeps_its_choices(tmp_path, monkeypatch):
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="config", overrides=["+search=mixed_precision"])
    journal = str(tmp_path / "study.log")
    study = optuna.create_study(study_name="s", storage=JournalStorage(JournalFileBackend(journal)),
                                directions=["minimize"])
    other = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(journal)))
    layers = [name for name, _ in space._layer_dtypes(*space._model_key(cfg))]
    assert len(layers) >= 2

    def choices_while_the_other_process_writes(_cfg):
        theirs = other.ask()  # it also found the study empty; it is quicker to write
        for name in layers[:-1]:
            theirs.suggest_categorical(space.PARAM_PREFIX + name, ["fp32", "int8"])
        return {name: ["fp32", "int8", "int4"] for name in layers}  # our timings offered more

    monkeypatch.setattr(space, "layer_choices", choices_while_the_other_process_writes)
    trial = study.ask()
    space.mixed_precision_space(cfg, trial)
    dists = {k.removeprefix(space.PARAM_PREFIX): v.choices for k, v in trial.distributions.items()}
    assert set(dists) == set(layers)  # every layer, not only those the other one wrote
    for name in layers[:-1]:
        assert dists[name] == ("fp32", "int8")  # the study's, written first by the other process
    assert dists[layers[-1]] == ("fp32", "int8", "int4")  # not yet in the study: our own
