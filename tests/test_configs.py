"""Config files (configs/NAME.py[:arg]): every file and preset builds, validates and builds its module;
``--config=`` on the CLI with overrides on top and one-line errors; ``--model=NAME`` defaults unchanged;
values set from Python are validated."""

import dataclasses
import glob
import importlib
import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import REPO, assert_one_line_error, run_cli

from archlab.arch import MODELS, get_model_spec
from archlab.launch.train import main as train_main
from archlab.train.config import ConfigError, apply_overrides, get_config, load_config_file, resolve_config
from archlab.train.loop import train_and_evaluate
from archlab.train.resume import read_run_config
from archlab.train.workdir import load_run_info

FILES = sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
               if os.path.basename(p) not in ("__init__.py", "base.py", "nas.py"))  # nas.py: launch.nas's, no model
REFS = [f + (f":{arg}" if arg else "") for f in FILES
        for arg in (importlib.import_module(f"archlab.configs.{os.path.basename(f)[:-3]}").ARGS or ("",))]


def _param_count(config) -> int:
    spec = get_model_spec(config.model_name)
    model = config.model
    if spec.from_data is not None and not model.get("sample_shape", True):  # the GAN reads its sample shape off the data
        model = model.copy_and_resolve_references()
        model.sample_shape = (2,)
    module = spec.make_module(model)
    rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
    variables = jax.eval_shape(lambda: module.init(rngs, spec.example_input(config), deterministic=True))
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(nn.meta.unbox(variables)["params"]))


def test_there_is_one_file_per_family_and_the_named_presets():
    assert {os.path.basename(f) for f in FILES} == {"transformer.py", "mlp.py", "cnn.py", "resnet.py", "rnn.py", "gan.py", "nerf.py",
                                                    "inception.py", "dehaze.py", "nas_cell.py"}
    for ref in ("configs/transformer.py:small", "configs/transformer.py:gpt2_124m", "configs/resnet.py:cifar10_r18",
                "configs/resnet.py:imagenet_r50", "configs/gan.py:digits"):
        assert ref in REFS
    for name, spec in MODELS.items():  # every registry entry names a file and arg that exist
        assert f"configs/{spec.config}" in REFS or f"configs/{spec.config.partition(':')[0]}" in FILES, (name, spec.config)


@pytest.mark.parametrize("ref", REFS)
def test_every_config_file_and_arg_resolves_locks_validates_and_builds(ref):
    config = load_config_file(os.path.join(REPO, ref))
    assert config.model_name in MODELS
    with pytest.raises(AttributeError):  # locked: a misspelt field is an error, not a new field
        config.train.stepz = 5
    resolved = resolve_config(config)
    assert resolved.train.loss_scaling in ("none", "dynamic")
    assert _param_count(resolved) > 0


def test_named_presets_are_what_their_names_say():
    gpt2 = load_config_file(os.path.join(REPO, "configs/transformer.py:gpt2_124m"))
    m = gpt2.model
    assert (m.num_layers, m.num_heads, m.d_model, m.mlp_dim, m.max_len, m.vocab_size) == (12, 12, 768, 3072, 1024, 50304)
    assert (m.positional, m.tie_embeddings, gpt2.data.seq_len, gpt2.data.tokenizer, gpt2.data.path) == ("learned", True, 1024, "sentencepiece", "")
    assert _param_count(gpt2) == pytest.approx(124.48e6, rel=1e-3)  # nanoGPT's count for vocab 50304
    cifar = load_config_file(os.path.join(REPO, "configs/resnet.py:cifar10_r18"))
    assert (cifar.model_name, cifar.model.stem, cifar.model.width, cifar.data.image_size, cifar.train.batch_size) == ("resnet18", "cifar", 64, 32, 128)
    assert (cifar.train.augment, cifar.train.augment_pad, cifar.data.normalize, cifar.data.format, cifar.data.path) == (
        "shift_flip", 4, "auto", "cifar10", "")
    assert _param_count(cifar) == pytest.approx(11.17e6, rel=1e-3)  # ResNet-18 for CIFAR (one input channel here)
    r50 = load_config_file(os.path.join(REPO, "configs/resnet.py:imagenet_r50"))
    assert (r50.model_name, r50.model.stem, r50.model.num_classes, r50.data.image_size, r50.data.format) == (
        "resnet50", "imagenet", 1000, 224, "image_folder")
    assert _param_count(r50) == pytest.approx(25.557e6, rel=1e-3)  # torchvision's resnet50: 25,557,032


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def test_model_defaults_are_unchanged():
    # tests/config_defaults.json froze, before the defaults moved to configs/, every field each
    # family set (and the GAN's digits values): --model=NAME must still resolve to exactly those.
    with open(os.path.join(REPO, "tests", "config_defaults.json")) as f:
        frozen = json.load(f)
    assert set(frozen) == set(MODELS) | {"gan+digits"}
    for name, sections in frozen.items():
        model = name.split("+")[0]
        config = get_config(model) if name == model else apply_overrides(get_config(model), {"data.dataset": "digits"})
        assert sorted(config.model.keys()) == sorted(sections["model"]), name
        for section, values in sections.items():
            for key, value in values.items():
                actual = _plain(config[section][key])
                assert (type(actual), actual) == (type(value), value), f"{name}: {section}.{key}"
        # --model=NAME is the file and arg its registry entry names; a file's default arg is its first model
        spec_config = load_config_file(os.path.join(REPO, "configs", MODELS[model].config)).to_dict()
        assert get_config(model).to_dict() == spec_config
    assert load_config_file(os.path.join(REPO, "configs/resnet.py")).to_dict() == get_config("resnet18").to_dict()
    assert load_config_file(os.path.join(REPO, "configs/transformer.py")).to_dict() == get_config("transformer").to_dict()
    digits = load_config_file(os.path.join(REPO, "configs/gan.py:digits"))
    assert resolve_config(digits).to_dict() == apply_overrides(get_config("gan"), {"data.dataset": "digits"}).to_dict()


def test_cifar10_preset_dry_run_prints_its_values_with_overrides_on_top(tmp_path):
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("data_batch_1", 200), ("test_batch", 40)):
        with open(folder / name, "wb") as f:
            pickle.dump({b"labels": [i % 10 for i in range(n)], b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8)}, f, protocol=2)
    proc = run_cli("launch.train", "--config=configs/resnet.py:cifar10_r18", f"--config.data.path={folder}", "--config.train.steps=7",
                   "--dry_run", timeout=240)
    assert proc.returncode == 0, proc.stderr
    body, _, last = proc.stdout.strip().rpartition("\n")
    config = json.loads(body)
    assert config["model_name"] == "resnet18" and config["model"]["width"] == 64 and config["data"]["format"] == "cifar10"
    assert (config["train"]["batch_size"], config["train"]["augment"], config["train"]["augment_pad"]) == (128, "shift_flip", 4)
    assert config["train"]["steps"] == 7 and config["data"]["path"] == str(folder)  # the overrides win
    assert last.startswith("dry run OK: --model=resnet18 (--config=configs/resnet.py:cifar10_r18)") and "CIFAR-10" in last
    assert "workdir runs/resnet_cifar10_r18" in last  # a preset's own default workdir, never another preset's


def _bad_files(tmp_path) -> dict[str, str]:
    files = {"no_get_config.py": "X = 1\n", "raises.py": "def get_config(arg=None):\n    raise RuntimeError('boom: no such dataset')\n",
             "broken.py": "def get_config(:\n", "not_a_dict.py": "def get_config(arg=None):\n    return {'model_name': 'mlp'}\n",
             "no_fields.py": "import ml_collections\ndef get_config(arg=None):\n    return ml_collections.ConfigDict({'model_name': 'mlp'})\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return {name: str(tmp_path / name) for name in files}


def test_config_file_errors_are_one_line_and_exit_2(tmp_path, capsys):
    files = _bad_files(tmp_path)
    cases = [
        (["--config=configs/nope.py"], ["config file 'configs/nope.py' does not exist"]),
        ([f"--config={files['no_get_config.py']}"], ["no_get_config.py", "defines no get_config"]),
        ([f"--config={files['raises.py']}"], ["raises.py", "get_config() raised RuntimeError: boom: no such dataset"]),
        ([f"--config={files['broken.py']}:x"], ["broken.py", "failed to load: SyntaxError"]),
        ([f"--config={files['not_a_dict.py']}"], ["not_a_dict.py", "returned a dict, not an ml_collections.ConfigDict"]),
        ([f"--config={files['no_fields.py']}"], ["config.", "is missing", "configs/mlp.py"]),
        (["--config=configs/resnet.py:nope"], ["configs/resnet.py", "get_config('nope') raised ValueError: unknown arg 'nope'",
                                                "r18, r34, r50, cifar10_r18, imagenet_r50"]),
        (["--config=configs/mlp.py:big"], ["configs/mlp.py", "this file takes no arg"]),
        (["--model=cnn", "--config=configs/resnet.py:cifar10_r18"], ["--model=cnn", "is a 'resnet18' config"]),
        (["--config=configs/resnet.py:cifar10_r18", "--config.train.stepz=5"], ["unknown config key config.train.stepz", "steps"]),
        (["--config=configs/resnet.py:cifar10_r18", "--config.train.steps=many"], ["config.train.steps", "'many' is not a valid int"]),
        (["--config=configs/resnet.py:cifar10_r18", "--config.model.stem=vgg"], ["model.stem must be 'cifar' or 'imagenet'"]),
        (["--config="], ["--config is empty"]),
        ([], ["one of --model=NAME or --config=configs/NAME.py[:arg] is required"]),
    ]
    for args, fragments in cases:
        with pytest.raises(SystemExit) as info:
            train_main([*args, f"--workdir={tmp_path / 'w'}", "--dry_run"])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert info.value.code == 2 and len(lines) == 1, (args, err)
        for fragment in fragments:
            assert fragment in lines[0], (args, lines[0])
    assert not (tmp_path / "w").exists()


def test_shipped_config_files_load_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config_file("configs/resnet.py:r34").to_dict() == get_config("resnet34").to_dict()
    with pytest.raises(ConfigError, match="config file 'configs/nope.py' does not exist"):
        load_config_file("configs/nope.py")


def test_a_config_file_error_through_a_real_process(tmp_path):
    proc = run_cli("launch.train", "--config=configs/resnet.py:cifar10", f"--workdir={tmp_path / 'w'}")
    assert_one_line_error(proc, "configs/resnet.py", "unknown arg 'cifar10'", "valid: r18, r34, r50, cifar10_r18, imagenet_r50")


def test_help_with_a_config_file_lists_that_files_fields(capsys):
    with pytest.raises(SystemExit) as info:
        train_main(["--config=configs/resnet.py:imagenet_r50", "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    assert "config overrides for --config=configs/resnet.py:imagenet_r50" in out
    assert "--config.model.num_classes=1000" in out and "--config.data.image_size=224" in out and "--config.data.format='image_folder'" in out


def test_python_set_values_are_typed_and_validated(tmp_path):
    config = get_config("mlp")
    config.train.steps = 400  # typed values, no strings
    config.model.hidden = (32,)
    assert resolve_config(config).train.steps == 400
    for wrong in ("400", 400.5):  # ml_collections refuses these at the assignment itself
        with pytest.raises(TypeError):
            config.train.steps = wrong
    # It lets None through (and after a None, any type): the config check refuses those.
    bad = [("train", "steps", 0, "train.steps must be >= 1"), ("train", "steps", None, "config.train.steps must be an int"),
           ("model", "activation", None, "config.model.activation must be a string"),
           ("model", "activation", "swishy", "model.activation must be one of"),
           ("train", "weight_decay", float("nan"), "config.train.weight_decay must be a finite number")]
    for section, field, value, message in bad:
        config = get_config("mlp")
        config[section][field] = value
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            train_and_evaluate(config, str(tmp_path / "w"), progress=False, echo=lambda *a: None)
    assert not (tmp_path / "w").exists()
    fp16 = get_config("mlp")
    fp16.model.dtype = "float16"
    assert resolve_config(fp16).train.loss_scaling == "dynamic"  # "auto" is resolved for Python callers too


def test_gan_digits_dataset_values_still_apply_as_an_override():
    config = apply_overrides(get_config("gan"), {"data.dataset": "digits", "train.steps": "11"})
    assert (config.model.width, config.data.image_size, config.data.eval_samples, config.train.batch_size) == (32, 16, 512, 64)
    assert config.train.steps == 11  # the user's overrides on top of the dataset's values


def test_the_config_files_are_the_one_source_of_model_defaults():
    """Each registered module takes exactly its config's ``model`` keys (plus ``decode``), with no
    defaults of its own, so a class default can never disagree with the config file."""
    for name, spec in MODELS.items():
        fields = {f.name: f for f in dataclasses.fields(spec.module) if f.name not in ("parent", "name")}
        assert set(fields) - {"decode"} == set(spec.model_defaults()), name
        with_defaults = [f.name for f in fields.values()
                         if f.name != "decode" and (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)]
        assert with_defaults == [], (name, with_defaults)


def test_an_old_run_config_without_a_newer_model_field_still_loads(tmp_path):
    """config.json files written before ``model.depth`` / ``model.kind`` existed resume and export."""
    config = get_config("resnet34").to_dict()
    del config["model"]["depth"]
    (tmp_path / "config.json").write_text(json.dumps({"config": config}))
    assert read_run_config(str(tmp_path)).model.depth == 34
    assert load_run_info(str(tmp_path))["config"].model.depth == 34
