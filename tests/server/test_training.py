"""The training pipeline on the real model and real TinyStories text, in short runs.

Each stage must do its job (loss falls, levels reach their targets, the soft prompt reaches
the model) and its artifacts must load into a running server.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from del_client import Client, ClientConfig
from del_client.cli import main
from del_client.mechanism import PrivacySpec
from del_server.adapter import Adapter
from del_server.backends.transformers import TransformersBackend
from del_server.generation import PrivatePrompt, PromptBuilder
from del_server.settings import Settings
from del_server.train.attacks import attack_rates, client_table
from del_server.train.calibrate import LearnedAttack, calibrate
from del_server.train.data import load_split, read_documents
from del_server.train.loop import optimize
from del_server.train.pipeline import TrainConfig, run_all

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
        targets=(0.05, 0.15),
        calibration_tokens=1500,
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
    for level in evaluation["levels"]:
        assert level["noisy_soft_prompt"]["mean"] < level["noisy"]["mean"]
        assert level["informative"] == (
            level["noisy_soft_prompt"]["mean"] < evaluation["no_prompt"]
        )
    markdown = (out / "TRAINING.md").read_text()
    assert "no prompt at all" in markdown
    assert (out / "training_losses.png").stat().st_size > 0
    assert sorted(adapter.soft_prompts) == sorted(level["mu"] for level in report["levels"])


def test_calibrated_levels_reach_their_targets(trained):
    report = trained[2]
    for level in report["levels"]:
        strongest = max(level["nearest_neighbour_rate"], level["likelihood_rate"])
        # Within binomial sampling error of the target on the calibration tokens (z = 4).
        tolerance = 4 * np.sqrt(
            level["target_attack_rate"] * (1 - level["target_attack_rate"]) / level["tokens"]
        )
        assert abs(strongest - level["target_attack_rate"]) < tolerance + 0.01


def test_likelihood_attack_is_at_least_as_strong_as_nearest_neighbour(trained, loaded):
    adapter = trained[1]
    embeddings = loaded.embeddings.detach()
    tokens = np.arange(3, 512)  # every ordinary token once
    spec = PrivacySpec.from_mu(mu=20.0, dim=adapter.projection_dim, bits=4, clip=adapter.clip)
    rates = attack_rates(
        adapter, embeddings, client_table(adapter, embeddings), tokens, spec, seed=0
    )
    assert rates.likelihood >= rates.nearest_neighbour
    levels = calibrate(adapter, embeddings, tokens, targets=(0.1,), seed=0, iterations=12)
    assert levels[0].epsilon_token == pytest.approx(
        PrivacySpec.from_mu(mu=levels[0].mu, dim=16, bits=4, clip=adapter.clip).epsilon(delta=1e-5)
    )


def test_soft_prompt_is_prepended_at_inference_and_changes_the_output(trained, loaded):
    adapter = trained[1]
    backend = TransformersBackend(loaded.model)
    mu = max(adapter.soft_prompts)
    bare = Adapter(adapter.down, adapter.up, adapter.mean, adapter.clip)
    x_hat = np.random.default_rng(0).normal(0, adapter.clip / 2, (6, 16)).astype(np.float32)

    def greedy(a: Adapter) -> list[int]:
        inputs, used = PromptBuilder(backend, a, loaded.bos_id).build(PrivatePrompt(x_hat, mu=mu))
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
        level = adapter.calibration[0]
        cli = ["generate", "Once upon a time", "--server", loopback.target, "--json"]
        main([*cli, "--level", str(level["target_attack_rate"]), "--max-new-tokens", "2"])
        assert json.loads(capsys.readouterr().out)["soft_prompt_mu"] == pytest.approx(level["mu"])
        with pytest.raises(SystemExit) as refused:
            main([*cli, "--level", "0.5"])
        assert refused.value.code == 2
        assert "no level calibrated to 0.5" in capsys.readouterr().err
    assert sorted(model.soft_prompt_mus) == sorted(adapter.soft_prompts)
    assert [lv.mu for lv in model.privacy_levels] == [lv["mu"] for lv in adapter.calibration]
    assert {(lv.attack, lv.learned_rate) for lv in model.privacy_levels} == {("strongest", None)}
    assert result.soft_prompt_mu == pytest.approx(mu)


def test_calibrating_against_all_attacks_bounds_the_learned_one_too(trained, loaded, shared_dir):
    """The learned attack (an inversion network with a prior from public text) is trained
    at every bisection step; the level keeps every attack, the learned one included, under
    its target."""
    adapter = trained[1]
    embeddings = loaded.embeddings.detach()
    split = load_split(shared_dir / TINYSTORIES, loaded.tokenizer)
    public = split.train.prompts.reshape(-1).numpy()
    held_out = split.validation.prompts.reshape(-1)[:1000].numpy()
    learned = LearnedAttack(public, steps=60, batch=256)
    (level,) = calibrate(
        adapter, embeddings, held_out, targets=(0.1,), attack="all", learned=learned, iterations=6
    )
    assert level.attack == "all"
    assert level.learned_rate is not None
    assert max(level.nearest_neighbour_rate, level.likelihood_rate, level.learned_rate) < 0.1
    with pytest.raises(ValueError, match="needs the attacker's public text"):
        calibrate(adapter, embeddings, held_out, attack="learned")
    # Guessing frequent tokens already beats 1 %: no μ brings the learned attack below it.
    with pytest.raises(ValueError, match=r"a target of 1\.0% is out of reach for the all attack"):
        calibrate(
            adapter,
            embeddings,
            held_out,
            targets=(0.01,),
            attack="all",
            learned=learned,
            iterations=4,
        )


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
