import subprocess
import sys

import pytest

from rlx.config import REPO_ROOT, Config, ConfigError, dump_yaml, load_config

QUICKSTART = REPO_ROOT / "configs" / "quickstart.yaml"


def test_defaults_load_and_are_frozen():
    cfg = load_config(None)
    assert isinstance(cfg, Config)
    with pytest.raises(Exception):
        cfg.trainer.steps = 3  # frozen


def test_override_sets_typed_value():
    cfg = load_config(QUICKSTART, ["trainer.steps=3", "optim.lr=1e-4", 'engine.stop=["\\n\\n"]'])
    assert cfg.trainer.steps == 3
    assert cfg.optim.lr == pytest.approx(1e-4)
    assert cfg.engine.stop == ("\n\n",)


def test_int_is_accepted_for_float_but_not_the_reverse():
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0
    with pytest.raises(ConfigError, match=r"trainer.steps: expected int"):
        load_config(None, ["trainer.steps=2.5"])


def test_misspelled_key_names_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config(QUICKSTART, ["trainer.stepz=3"])
    assert "steps" in str(err.value) and "Did you mean 'steps'" in str(err.value)


def test_unknown_section_names_sections():
    with pytest.raises(ConfigError, match="trainer"):
        load_config(None, ["trainr.steps=3"])


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("algo:\n  advantag: grpo\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*algo.advantag.*advantage"):
        load_config(path)


def test_wrong_type_names_key_and_type():
    with pytest.raises(ConfigError, match=r"algo.n: expected int, got 'eight'"):
        load_config(None, ["algo.n=eight"])
    with pytest.raises(ConfigError, match=r"data.shuffle: expected bool"):
        load_config(None, ["data.shuffle=3"])


def test_cross_field_checks_name_the_fix():
    with pytest.raises(ConfigError, match="mini_batches"):
        load_config(None, ["trainer.prompts_per_step=3", "algo.n=3", "trainer.mini_batches=2"])
    with pytest.raises(ConfigError, match="run.kind"):
        load_config(None, ["run.kind=dance"])


def test_reward_specs_and_free_form_overrides():
    cfg = load_config(None, ["rewards.fns=[{name: math, weight: 1.0}, {name: boxed, weight: 0.5}]",
                             "model.overrides.n_layers=2"])
    assert [r.name for r in cfg.rewards.fns] == ["math", "boxed"]
    assert cfg.model.overrides == {"n_layers": 2}


def test_dump_round_trips(tmp_path):
    cfg = load_config(QUICKSTART, ["trainer.steps=7"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(path) == cfg


def _launch(*args):
    return subprocess.run([sys.executable, "-m", "rlx.launch", *args], capture_output=True,
                          text=True, cwd=REPO_ROOT, timeout=120)


def test_cli_misspelled_key_fails_cleanly():
    proc = _launch("configs/quickstart.yaml", "trainer.stepz=3")
    assert proc.returncode == 2
    assert "steps" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_print_config():
    proc = _launch("configs/quickstart.yaml", "trainer.steps=3", "--print-config")
    assert proc.returncode == 0, proc.stderr
    assert "steps: 3" in proc.stdout


def test_cli_help_lists_kinds():
    proc = _launch("--help")
    assert proc.returncode == 0
    for kind in ("train", "sft", "eval", "serve", "plan", "bench"):
        assert kind in proc.stdout


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_states_how_to_run_it(path):
    cfg = load_config(path)
    header = path.read_text().split("\n\n")[0]
    for word in ("Command:", "Hardware:", "Expected:"):
        assert word in header, f"{path.name}: header lacks '{word}'"
    assert cfg.run.name
