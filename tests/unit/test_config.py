"""Typed configs: YAML + dotted overrides, one clear line for every bad input."""

import re

import pytest
from pydantic import Field

from pipeline.config import (
    ConfigError,
    Section,
    dump_config,
    load_config,
    parse_overrides,
)


class Train(Section):
    epochs: float = Field(1.0, gt=0)
    global_batch: int = Field(4096, ge=1)


class Job(Section):
    name: str = "x"
    train: Train = Train()


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: base\ntrain:\n  epochs: 2\n")
    cfg = load_config(Job, str(path), ["train.global_batch=256", "name=run1"])
    assert cfg.name == "run1" and cfg.train.epochs == 2.0 and cfg.train.global_batch == 256
    assert "global_batch: 256" in dump_config(cfg)


def test_override_values_parse_as_yaml():
    assert parse_overrides(["a.b=1", "c=[1, 2]", "d=true", "e=text", "f="]) == {
        "a": {"b": 1},
        "c": [1, 2],
        "d": True,
        "e": "text",
        "f": "",
    }


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["train.epoch=1"],
            "unknown config key 'train.epoch'; expected one of ['epochs', 'global_batch']",
        ),
        (["trian.epochs=1"], "unknown config key 'trian'"),
        (["train.epochs=-1"], "bad config value train.epochs=-1: Input should be greater than 0"),
        (["train.global_batch=lots"], "bad config value train.global_batch='lots'"),
        (["train"], "bad override 'train': expected key.path=value"),
        (["a..b=1"], "bad override"),
        (["train=null"], "bad config value train=None"),
    ],
)
def test_bad_input_is_one_line(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(Job, None, overrides)
    text = str(info.value)
    assert message in text and "\n" not in text


def test_missing_required_key():
    class Needs(Section):
        input: str

    with pytest.raises(
        ConfigError,
        match=re.escape("missing config key 'input'; set it in the config file or as input=..."),
    ):
        load_config(Needs, None, [])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Job, str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Job, str(bad))
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(Job, str(lst))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["cluster.workers=2", "cluster.min_workers=3"],
         "cluster.min_workers=3 is above cluster.workers=2; expected at most as many"),
        # an elastic restart may pick 3 workers: 16 images do not split over them
        (["cluster.workers=4", "cluster.min_workers=2", "train.global_batch=16"],
         "train.global_batch=16 does not split over cluster.workers=3"),
        (["cluster.placement=ANYWHERE"], "bad config value cluster.placement='ANYWHERE'"),
        # each worker owns whole partitions of the order: 3 workers cannot split 8 of them
        (["cluster.workers=4", "cluster.min_workers=2", "train.global_batch=24"],
         "cluster.workers=3 does not divide data.partitions=8; expected a partition count that"
         " every worker count divides (each worker owns whole partitions), e.g. data.partitions=12"),
        (["data.partitions=48", "train.global_batch=24"],
         "data.partitions=48 does not divide train.global_batch=24; expected a divisor"),
    ],
)  # fmt: skip
def test_elastic_worker_range_must_split_the_global_batch(overrides, message):
    from pipeline.train.config import PretrainConfig

    with pytest.raises(ConfigError) as info:
        load_config(PretrainConfig, None, overrides)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert load_config(PretrainConfig, None, ["cluster.workers=4", "cluster.min_workers=2",
                                              "train.global_batch=24", "data.partitions=12"]
                       ).cluster.min_workers == 2  # fmt: skip


def test_a_config_extends_another_and_a_cycle_is_one_line(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "a.yaml").write_text(
        "name: base\ntrain:\n  epochs: 2\n  global_batch: 8\n"
    )
    (tmp_path / "b.yaml").write_text("extends: base/a.yaml\ntrain:\n  epochs: 3\n")
    (tmp_path / "c.yaml").write_text("extends: b.yaml\nname: c\n")
    cfg = load_config(Job, str(tmp_path / "c.yaml"), ["train.global_batch=16"])
    assert (cfg.name, cfg.train.epochs, cfg.train.global_batch) == ("c", 3.0, 16)
    (tmp_path / "base" / "a.yaml").write_text("extends: ../c.yaml\n")
    with pytest.raises(ConfigError, match=r"extends itself through '\.\./c\.yaml'"):
        load_config(Job, str(tmp_path / "c.yaml"))


def test_the_finetune_default_extends_the_pretraining_default():
    from pipeline.train.config import FinetuneConfig, PretrainConfig

    tuned = load_config(FinetuneConfig, "configs/finetune/nano.yaml")
    pre = load_config(PretrainConfig, "configs/pretrain/nano.yaml")
    assert tuned.data.train == pre.data.train and tuned.cluster == pre.cluster
    assert tuned.train.global_batch == pre.train.global_batch and tuned.train.sam.rho == 0.05
    assert tuned.data.resolution == 64 and tuned.init.from_run == "runs/pretrain/nano"


def test_a_sweeps_pretraining_keys_are_checked_when_the_sweep_config_loads():
    from pipeline.sweep.config import SweepConfig

    with pytest.raises(ConfigError, match=r"pretrain \(onto configs/pretrain/nano.yaml\): bad"
                                          r" config value train.epochs=-1"):  # fmt: skip
        load_config(SweepConfig, "configs/sweep/nano.yaml", ["pretrain.train.epochs=-1"])


def test_a_key_of_the_flat_layout_is_refused_with_its_new_name():
    from pipeline.sweep.config import SweepConfig
    from pipeline.train.config import PretrainConfig

    with pytest.raises(ConfigError) as info:
        load_config(PretrainConfig, "configs/pretrain/nano.yaml", ["train.agc_clipping=0.02"])
    assert str(info.value) == (
        "bad config: train.agc_clipping is now train.optimizer.agc.clipping; expected the new key"
    )
    with pytest.raises(ConfigError, match=r"pretrain \(onto configs/pretrain/nano.yaml\):"
                                          r" run.mlflow_uri is now tracking.uri"):  # fmt: skip
        load_config(SweepConfig, "configs/sweep/nano.yaml", ["pretrain.run.mlflow_uri=x"])


def test_a_run_directory_of_the_flat_layout_resumes_and_a_changed_recipe_is_refused(tmp_path):
    import yaml

    from pipeline.config import UserError
    from pipeline.train.config import PretrainConfig
    from pipeline.train.driver.identity import RUN_CONFIG, check_same_run
    from pipeline.train.renamed import migrate

    assert migrate({"run": {"dir": "r", "mlflow_uri": "u"},
                    "train": {"base_lr": 0.4, "agc_clipping": 0.02, "epochs": 2}}) == {
        "run": {"dir": "r"}, "tracking": {"uri": "u"},
        "train": {"epochs": 2, "schedule": {"base_lr": 0.4},
                  "optimizer": {"agc": {"clipping": 0.02}}}}  # fmt: skip
    cfg = load_config(PretrainConfig, "configs/pretrain/nano.yaml", [f"run.dir={tmp_path}"])
    # run_config.yaml as the flat layout wrote it: no tracking section, no checkpoint.keep
    tree = cfg.model_dump(mode="json")
    t, tracking = tree["train"], tree.pop("tracking")
    tree["run"].update(experiment=tracking["experiment"], mlflow_uri=None, mlflow_parent=None)
    t.update(base_lr=t["schedule"]["base_lr"], reference_batch=256,
             warmup_epochs=t["schedule"]["warmup_epochs"], momentum=0.9, nesterov=True,
             weight_decay=t["optimizer"]["weight_decay"], agc_clipping=0.01, agc_eps=1e-3,
             ema_decay=t["ema"]["decay"], checkpoint_every=20, sam_rho=0.0,
             sam_ascent_fraction=1.0)  # fmt: skip
    for key in ("schedule", "optimizer", "ema", "sam", "checkpoint"):
        del t[key]
    (tmp_path / RUN_CONFIG).write_text(yaml.safe_dump(tree))
    check_same_run(cfg)  # the same recipe: resumes
    check_same_run(cfg.model_copy(update={"tracking": cfg.tracking.model_copy(
        update={"experiment": "other"})}))  # an operational key may change  # fmt: skip
    changed = load_config(PretrainConfig, "configs/pretrain/nano.yaml",
                          [f"run.dir={tmp_path}", "train.optimizer.agc.clipping=0.02"])  # fmt: skip
    with pytest.raises(UserError, match=r"another config \(train.optimizer.agc.clipping: 0.01 ->"
                                        r" 0.02\); expected the same recipe"):  # fmt: skip
        check_same_run(changed)
