"""The training pipeline on the real model and real TinyStories text, in short runs.

Each stage must do its job (loss falls, levels reach their targets, the soft prompt reaches
the model) and its artifacts must load into a running server.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from del_client import Client, ClientConfig
from del_client.cli import main
from del_client.mechanism import PrivacySpec
from del_server.adapter import Adapter
from del_server.attacks.suite import ATTACKS
from del_server.backends.transformers import TransformersBackend
from del_server.cli import reproducible_command
from del_server.generation import PrivatePrompt, PromptBuilder
from del_server.settings import Settings
from del_server.train.data import load_split, read_documents
from del_server.train.loop import HeldOut, optimize
from del_server.train.pipeline import TrainConfig, recalibrate, refresh_evaluation, run_all

TINYSTORIES = "data/tinystories/tinystories_val_head_dev.txt"


@pytest.fixture(scope="module")
def loaded(stories260k):
    from del_server.models import load_model

    return load_model(str(stories260k))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_dir, stories260k):
    out = tmp_path_factory.mktemp("adapter")
    config = TrainConfig(
        model=str(stories260k),
        data=str(shared_dir / TINYSTORIES),
        out=out,
        projection_steps=100,
        soft_prompt_steps=40,
        targets=(0.08, 0.15),
        calibration_prompts=40,
        beam_width=8,
        particles=16,
        prefix_steps=30,
        inversion_steps=40,
        eval_windows=32,
        eval_seeds=(0, 1),
    )
    adapter = run_all(config)
    return out, adapter, json.loads((out / "training.json").read_text())


def test_split_is_deterministic_and_holds_out_the_last_documents(shared_dir, stories260k):
    from del_server.models.llama2c_tokenizer import load_llama2c_tokenizer

    tokenizer = load_llama2c_tokenizer(stories260k / "tok512.bin")
    first = load_split(shared_dir / TINYSTORIES, tokenizer)
    again = load_split(shared_dir / TINYSTORIES, tokenizer)
    assert torch.equal(first.train.prompts, again.train.prompts)
    documents = read_documents(shared_dir / TINYSTORIES)
    assert first.validation_documents == round(0.1 * len(documents))
    assert first.train.prompts.shape[1] == first.train.continuations.shape[1] == 32


def test_training_losses_fall(trained):
    _, _, report = trained
    for name, summary in report["losses"].items():
        assert summary["last_mean"] < summary["first_mean"], name


def test_report_orders_clean_below_projected_and_states_informativeness(trained):
    out, adapter, report = trained
    evaluation = report["evaluation"]
    assert evaluation["clean"] <= evaluation["projected_no_noise"]
    # A soft prompt trained with nothing sent beats no prompt at all: it learned something.
    assert evaluation["nothing_sent_soft_prompt"] < evaluation["no_prompt"]
    assert evaluation["nothing_sent_training"] == {"length": 8, "steps": 40, "batch": 32, "seed": 0}
    for level in evaluation["levels"]:
        served = level["noisy_soft_prompt"]["mean"]
        assert served < level["noisy"]["mean"]
        assert level["informative"] == (served < evaluation["no_prompt"])
        assert level["better_than_nothing"] == (served < evaluation["nothing_sent"])
    markdown = (out / "TRAINING.md").read_text()
    assert "no prompt at all" in markdown
    assert "nothing sent, with a soft prompt trained for that case (8 vectors, 40 steps" in markdown
    assert (out / "training_losses.png").stat().st_size > 0
    assert sorted(adapter.soft_prompts) == sorted(level["mu"] for level in report["levels"])


def test_every_level_records_its_utility_as_served_against_nothing_sent(trained):
    out, adapter, report = trained
    evaluation = report["evaluation"]
    served = {level["mu"]: level for level in evaluation["levels"]}
    assert adapter.calibration == Adapter.load(out).calibration
    assert report["levels"] == [level.to_dict() for level in adapter.calibration]
    for level in adapter.calibration:
        utility = level.utility
        assert utility.to_dict() == {
            "metric": "held-out continuation loss (nats/token)",
            "value": served[level.mu]["noisy_soft_prompt"]["mean"],
            "nothing_sent": evaluation["nothing_sent"],
            "higher_is_better": False,
            "measured_on": "32 held-out windows of tinystories_val_head_dev.txt (32 prompt + "
            "32 continuation tokens), mean over noise seeds 0, 1",
        }
        assert utility.better_than_nothing == served[level.mu]["better_than_nothing"]


def test_evaluate_refreshes_the_utility_and_the_report_and_retrains_nothing_else(
    trained, tmp_path, shared_dir, stories260k
):
    out, adapter, report = trained
    shutil.copytree(out, tmp_path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoints"))
    description = json.loads((tmp_path / "adapter.json").read_text())
    for level in description["calibration"]:
        del level["utility"]  # an adapter evaluated before utility records existed
    (tmp_path / "adapter.json").write_text(json.dumps(description))
    tensors = (tmp_path / "adapter.safetensors").read_bytes()
    plot = (tmp_path / "training_losses.png").read_bytes()
    config = TrainConfig(
        model=str(stories260k),
        data=str(shared_dir / TINYSTORIES),
        out=tmp_path,
        eval_windows=32,
        eval_seeds=(0, 1),
        command="del-server train evaluate --out DIR",
    )
    refreshed = refresh_evaluation(config)
    assert (tmp_path / "adapter.safetensors").read_bytes() == tensors
    assert (tmp_path / "training_losses.png").read_bytes() == plot
    assert refreshed.calibration == Adapter.load(tmp_path).calibration
    # Same seed, steps and windows as `train all`: the same figures again.
    for level, before in zip(refreshed.calibration, adapter.calibration, strict=True):
        figures = {
            key: pytest.approx(getattr(before.utility, key)) for key in ("value", "nothing_sent")
        }
        assert level.utility.to_dict() == {**before.utility.to_dict(), **figures}
    again = json.loads((tmp_path / "training.json").read_text())
    assert again["levels"] == [level.to_dict() for level in refreshed.calibration]
    assert again["config"] == report["config"]  # what trained it, still
    assert again["timings"]["total_s"] == report["timings"]["total_s"]
    assert again["evaluated_by"]["command"] == "del-server train evaluate --out DIR"
    assert (
        "(evaluation refreshed with `del-server train evaluate --out DIR`)"
        in (tmp_path / "TRAINING.md").read_text()
    )


def test_recalibrate_replaces_the_levels_and_keeps_the_projection_and_its_record(trained, tmp_path):
    """When the attack suite grows, a provider recalibrates: new levels, each with a new soft
    prompt and front-end and its utility, on the projection it already has."""
    out, adapter, report = trained
    shutil.copytree(out, tmp_path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoints"))
    config = TrainConfig(
        **{
            **report["config"],  # the fixture's small attacks and evaluation
            "out": tmp_path,
            "soft_prompt_steps": 6,
            "targets": (0.12,),
            "eval_seeds": (0,),
            "command": "del-server train recalibrate --out DIR --targets 0.12",
        }
    )
    recalibrated = recalibrate(config)
    for name in ("down", "up", "mean"):
        assert torch.equal(getattr(recalibrated, name), getattr(adapter, name))
    assert recalibrated.clip == adapter.clip
    (level,) = recalibrated.calibration
    assert level.target_attack_rate == 0.12
    assert set(level.attacks) == set(ATTACKS)
    assert level.utility is not None
    assert list(recalibrated.soft_prompts) == [level.mu]  # the old levels' prompts are gone
    assert Adapter.load(tmp_path).calibration == recalibrated.calibration
    again = json.loads((tmp_path / "training.json").read_text())
    assert again["levels"] == [level.to_dict()]
    # The projection was trained by the original command; the report keeps its record.
    assert again["losses"]["projection"] == report["losses"]["projection"]
    for key in ("command", "projection_steps", "projection_noise_mu"):
        assert again["config"][key] == report["config"][key]
    assert again["config"]["targets"] == [0.12]
    assert again["config"]["soft_prompt_steps"] == 6
    markdown = (tmp_path / "TRAINING.md").read_text()
    assert (
        "(levels recalibrated, the projection kept, with "
        "`del-server train recalibrate --out DIR --targets 0.12`)"
    ) in markdown
    assert "| 12% |" in markdown


def test_recalibrating_one_level_under_a_cap_keeps_the_others_as_they_were(trained, tmp_path):
    """An audit found one level failing against a stronger attacker and a smaller μ that
    holds: the provider recalibrates that level alone, capped there, and the others keep
    their μ, record, soft prompt and front-end."""
    out, adapter, report = trained
    shutil.copytree(out, tmp_path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoints"))
    before = {level.target_attack_rate: level for level in adapter.calibration}
    cap = 0.9 * before[0.15].mu
    config = TrainConfig(
        **{
            **report["config"],
            "out": tmp_path,
            "soft_prompt_steps": 6,
            "targets": (0.15,),
            "max_mu": cap,
            "keep_other_levels": True,
            "particles": 2 * report["config"]["particles"],  # the audit's attacker was stronger
            "eval_seeds": (0,),
            "command": "del-server train recalibrate --out DIR --targets 0.15 --keep-other-levels",
        }
    )
    recalibrated = recalibrate(config)
    after = {level.target_attack_rate: level for level in recalibrated.calibration}
    assert list(after) == [0.08, 0.15]
    kept = before[0.08]
    assert after[0.08].mu == kept.mu
    assert after[0.08].attacks == kept.attacks
    assert torch.equal(recalibrated.soft_prompts[kept.mu], adapter.soft_prompts[kept.mu])
    assert after[0.15].mu <= cap
    assert after[0.15].strongest.high < 0.15
    assert sorted(recalibrated.soft_prompts) == [kept.mu, after[0.15].mu]
    assert all(level.utility is not None for level in recalibrated.calibration)
    assert Adapter.load(tmp_path).calibration == recalibrated.calibration
    stronger = f"particle attacks at {2 * report['config']['particles']} particles"
    assert stronger in after[0.15].measured_on
    assert after[0.08].measured_on == kept.measured_on
    assert stronger not in kept.measured_on
    assert "Measured by level: the 8% level on " in (tmp_path / "TRAINING.md").read_text()


def test_every_level_holds_against_every_attack_and_says_so(trained):
    out, _, report = trained
    for level in report["levels"]:
        assert set(level["attacks"]) == set(ATTACKS)
        strongest = level["attacks"][level["strongest_attack"]]
        assert strongest["rate"] == max(a["rate"] for a in level["attacks"].values())
        assert max(a["high"] for a in level["attacks"].values()) < level["target_attack_rate"]
        assert level["epsilon_token"] == pytest.approx(
            PrivacySpec.from_mu(mu=level["mu"], dim=16, bits=4, clip=report["clip"]).epsilon(
                delta=1e-5
            )
        )
        assert 0 < level["prior_alone_rate"] < level["target_attack_rate"]
    assert "strongest attack" in (out / "TRAINING.md").read_text()


def test_soft_prompt_is_prepended_at_inference_and_changes_the_output(trained, loaded):
    adapter = trained[1]
    backend = TransformersBackend(loaded.model)
    mu = max(adapter.soft_prompts)
    bare = Adapter(adapter.down, adapter.up, adapter.mean, adapter.clip)
    symbols = np.random.default_rng(0).integers(0, 16, (6, 16), dtype=np.uint8)
    prompt = PrivatePrompt(symbols, PrivacySpec.from_mu(mu=mu, dim=16, bits=4, clip=1.0), mu=mu)

    def greedy(a: Adapter) -> list[int]:
        inputs, used, _ = PromptBuilder(backend, a, loaded.bos_id).build(prompt)
        logits, state = backend.prefill(inputs)
        batch = backend.new_batch()
        batch.add(state)
        ids = []
        for _ in range(8):
            ids.append(int(logits.argmax()))
            logits = batch.decode([ids[-1]])[0]
        return ids, inputs.shape[0], used

    with_soft, length_soft, used = greedy(adapter)
    without, length_bare, none = greedy(bare)
    assert (used, none) == (mu, None)
    assert length_soft == length_bare + adapter.soft_prompts[mu].shape[0]
    assert with_soft != without


def test_trained_adapter_loads_into_a_running_server(
    trained, tmp_path, serve, stories260k, capsys, monkeypatch
):
    out, adapter, _ = trained
    settings = Settings(model=str(stories260k), adapter=str(out), port=0, metrics_port=-1)
    monkeypatch.setenv("DEL_CACHE_DIR", str(tmp_path))
    with serve(settings) as loopback:
        client = Client(ClientConfig(target=loopback.target, bundle_cache_dir=tmp_path))
        with client:
            model = client.manifest().model
            mu = max(adapter.soft_prompts)
            result = client.generate("Once upon a time", mu=mu, max_new_tokens=4, seed=0).collect()
            default = client.generate("Once upon a time", max_new_tokens=2, seed=0).collect()
        level = adapter.calibration[0]
        cli = ["generate", "Once upon a time", "--server", loopback.target, "--json"]
        main([*cli, "--level", str(level.target_attack_rate), "--max-new-tokens", "2"])
        assert json.loads(capsys.readouterr().out)["soft_prompt_mu"] == pytest.approx(level.mu)
        with pytest.raises(SystemExit) as refused:
            main([*cli, "--level", "0.5"])
        assert refused.value.code == 2
        assert "no level calibrated to 0.5" in capsys.readouterr().err
    assert sorted(model.soft_prompt_mus) == sorted(adapter.soft_prompts)
    assert [lv.mu for lv in model.privacy_levels] == [lv.mu for lv in adapter.calibration]
    for served, level in zip(model.privacy_levels, adapter.calibration, strict=True):
        assert {a.attack for a in served.attacks} == set(ATTACKS)
        assert served.strongest_attack == level.strongest_attack
        assert served.strongest_rate_high < served.target_attack_rate
        assert served.measured_prompts == 40
        assert "a server that tries hard recovers about" in served.summary()
        assert served.utility.value == level.utility.value
        assert served.better_than_nothing == level.utility.better_than_nothing
    assert result.soft_prompt_mu == pytest.approx(mu)
    # No privacy option: the server's most private level, never a constant from elsewhere.
    assert default.soft_prompt_mu == pytest.approx(min(adapter.soft_prompts))


def test_an_interrupted_run_resumes_to_the_same_result(tmp_path):
    """Stopping after a checkpoint and resuming equals one uninterrupted run, step for step."""
    target = torch.randn(5)

    def run(steps: int, resume: bool) -> tuple[torch.Tensor, list[float]]:
        params = {"w": torch.zeros(5)}
        loss = lambda g: ((params["w"] - target - 0.1 * torch.randn(5, generator=g)) ** 2).sum()  # noqa: E731
        losses = optimize(
            params,
            loss,
            steps=steps,
            lr=0.05,
            seed=3,
            desc="t",
            checkpoint=tmp_path / "ck",
            resume=resume,
            checkpoint_every=10,
        )
        return params["w"], losses

    whole_w, whole_losses = run(40, resume=False)
    (tmp_path / "ck.json").unlink()
    run(20, resume=False)
    resumed_w, resumed_losses = run(40, resume=True)
    torch.testing.assert_close(resumed_w, whole_w)
    assert resumed_losses == pytest.approx(whole_losses)


def _drifting_run(
    tmp_path, steps: int, resume: bool, wanted: float | None = 0.3
) -> tuple[torch.Tensor, HeldOut | None]:
    """w trained from 0 towards 1 while the held-out score wants it at `wanted` (None: no
    checks): at 0.3 the best check is part way, and the loop must end there, not at its last
    step."""
    params = {"w": torch.zeros(3)}
    held_out = None
    if wanted is not None:
        held_out = HeldOut(lambda: float(((params["w"] - wanted) ** 2).sum()), every=5)
    optimize(
        params,
        lambda g: ((params["w"] - 1) ** 2).sum(),
        steps=steps,
        lr=0.02,
        seed=0,
        desc="t",
        checkpoint=tmp_path / "drift",
        resume=resume,
        checkpoint_every=10,
        held_out=held_out,
    )
    return params["w"], held_out


def test_a_stage_ends_on_its_best_held_out_check_not_its_last_step(tmp_path):
    w, held_out = _drifting_run(tmp_path, 60, resume=False)
    steps = [step for step, _ in held_out.checks]
    assert steps == list(range(0, 61, 5))  # before the first step, then every 5
    chosen, score = held_out.best
    assert 0 < chosen < 60
    assert float(((w - 0.3) ** 2).sum()) == pytest.approx(score)
    assert held_out.summary() == {"chosen_step": chosen, "held_out_score": score, "checks": 13}


def test_a_resumed_stage_keeps_the_checks_and_the_best_of_its_first_part(tmp_path):
    whole_w, whole = _drifting_run(tmp_path, 60, resume=False)
    (tmp_path / "drift.json").unlink()
    _drifting_run(tmp_path, 30, resume=False)
    resumed_w, resumed = _drifting_run(tmp_path, 60, resume=True)
    assert whole.best[0] < 30  # the best was found before the interruption
    np.testing.assert_allclose(np.array(resumed.checks), np.array(whole.checks))
    torch.testing.assert_close(resumed_w, whole_w)


def test_a_stage_resumed_without_checks_ends_on_its_last_step(tmp_path):
    """The checkpoint's best parameters are for a run that checks; one that does not keeps
    training's own result."""
    whole, _ = _drifting_run(tmp_path, 60, resume=False, wanted=None)
    (tmp_path / "drift.json").unlink()
    _drifting_run(tmp_path, 30, resume=False, wanted=0.0)  # best: its first check
    resumed, _ = _drifting_run(tmp_path, 60, resume=True, wanted=None)
    torch.testing.assert_close(resumed, whole)


def test_a_report_reproduces_a_resumed_run_by_the_command_without_resume():
    """Resuming is how a stopped run was finished: the reproduction line leaves it out and
    keeps every other argument as typed."""
    argv = ["train", "all", "--out", "my dir", "--resume", "--noise-mu", "7.12"]
    assert reproducible_command(argv) == "del-server train all --out 'my dir' --noise-mu 7.12"


def test_the_posterior_front_end_is_trained_with_each_soft_prompt_and_evaluated(trained, tmp_path):
    from dataclasses import replace

    from del_server.front_end import initial_parameters
    from del_server.train.pipeline import Workbench, evaluation, soft_prompt_stage

    out, _adapter, report = trained
    config = TrainConfig(**{**report["config"], "out": tmp_path, "targets": (0.08, 0.15)})
    config = replace(
        config, soft_prompt_steps=6, front_end="posterior", eval_seeds=(0,), reader_particles=8
    )
    bench = Workbench.open(config)
    posterior = soft_prompt_stage(bench, Adapter.load(out))
    assert posterior.front_end == "posterior"
    assert posterior.prior.vocab == 512
    assert posterior.front_ends.keys() == posterior.soft_prompts.keys()
    start = initial_parameters(bench.lm.table)
    for parameters in posterior.front_ends.values():
        assert not torch.equal(parameters["unknown"], start["unknown"])
    evaluated, figures = evaluation(bench, posterior)
    # Served through the particle reader: the levels' utility is its loss, against the better
    # of the two ways of sending nothing.
    assert evaluated.reader.particles == figures["reader"]["particles"] == 8
    assert evaluated.reader.prefix.shape == (config.soft_prompt_length, 64)
    assert evaluated.reader.ignore_prompt == {
        level["mu"]: level["reader"]["ignore_prompt"] for level in figures["levels"]
    }
    assert [level.utility.value for level in evaluated.calibration] == [
        level["reader"]["loss"] for level in figures["levels"]
    ]
    assert figures["nothing_sent"] == min(
        figures["nothing_sent_soft_prompt"], figures["nothing_sent_reader"]["loss"]
    )
    assert {level.utility.nothing_sent for level in evaluated.calibration} == {
        figures["nothing_sent"]
    }
    assert "particle reader (8 particles" in evaluated.calibration[0].utility.measured_on
    for level, figures_level in zip(evaluated.calibration, figures["levels"], strict=True):
        # Paired over the windows against sending nothing: a verdict beyond sampling error.
        assert level.utility.margin == figures_level["reader"]["margin"] > 0
    unread, _ = evaluation(replace(bench, config=replace(config, reader_particles=0)), posterior)
    assert unread.reader is None
    back = soft_prompt_stage(
        Workbench(replace(config, front_end="linear"), bench.loaded, bench.lm, bench.split),
        evaluated,  # with its reader, which the linear front-end cannot have
    )
    assert back.reader is None
    assert back.front_end == "linear"
    assert not back.front_ends
    assert back.soft_prompts.keys() == posterior.soft_prompts.keys()
