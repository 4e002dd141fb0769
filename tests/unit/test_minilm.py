"""--model minilm: both modes (frozen encoder, DP fine-tuned top layer) end to end on a
small slice of real data, plus the model's own guarantees (public start, clear errors)."""

from __future__ import annotations

import json
from functools import lru_cache

import pytest
import torch

from fedshield.audit.report import independent_epsilon
from fedshield.common import minilm
from fedshield.common.config import RunConfig
from fedshield.common.dp_event import DpEvent
from fedshield.common.errors import ConfigError
from fedshield.common.model import ModelSpec
from fedshield.common.owner_keys import open_owner_keys
from tests.support.simulation import simulate

SLICE = ["--data", "rotten-tomatoes", "--max-records", "600"]
SMALL = ["--clients", "2", "--rounds", "5", "--partition", "iid", "--epsilon", "8"]
ROUNDS_FINE_TUNED = "4"


def _metrics(out) -> dict:
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_frozen_encoder_run_learns_within_budget(tmp_path):
    proc = simulate(
        *SLICE,
        *SMALL,
        *("--max-tokens", "48", "--model", "minilm", "--finetune-layers", "0"),
        *("--out", str(tmp_path)),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = _metrics(tmp_path)
    rounds = metrics["rounds"]
    assert metrics["final"]["accuracy"] > rounds[0]["accuracy"] + 0.1
    assert 0 < max(rounds[-1]["epsilon"].values()) <= 8.0 + 1e-9
    # Each owner was encoded once, before round 1, into the run's cache (mode 0600).
    cached = sorted((tmp_path / "cache").glob("encoded-*.npz"))
    assert len(cached) == 2 and all(p.stat().st_mode & 0o777 == 0o600 for p in cached)
    assert "desensitising and encoding (MiniLM), once per owner" in proc.stdout
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["model"] == "minilm" and meta["finetune-layers"] == 0
    assert meta["encoder-weights-sha256"] == minilm.weights_sha256()
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "weight": (2, minilm.HIDDEN),
        "bias": (2,),
    }


@pytest.mark.slow
def test_fine_tuned_top_layer_moves_from_the_public_weights_and_epsilon_checks_out(tmp_path):
    # 4 rounds: the head starts at zero with half the clipping norm, and round 1 still
    # predicts the majority class (0.55 here); the final accuracy was 0.68-0.76 in 8 runs
    # on 2026-12-07 (0.73 with the 8 rounds run before, at about twice the time: more
    # noise per round). 32 tokens fine-tune a third less per record than 48; the median
    # review here is 26 tokens.
    proc = simulate(
        *SLICE,
        *SMALL,
        "--max-tokens",
        "32",
        "--rounds",
        ROUNDS_FINE_TUNED,
        "--model",
        "minilm",
        "--finetune-layers",
        "1",
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = _metrics(tmp_path)
    assert metrics["final"]["accuracy"] > metrics["rounds"][0]["accuracy"] + 0.05
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    public = ModelSpec(name="minilm", finetune_layers=1).build(2).state_dict()
    assert state.keys() == public.keys()
    query = "layers.0.attention.self.query.weight"
    moved = torch.linalg.norm(state[query] - public[query])
    assert 0 < moved < 0.5 * torch.linalg.norm(public[query])  # fine-tuned, not overwritten
    # Each owner's epsilon, recomputed from its charged events by a second accountant
    # (dp-accounting), matches what its ledger charged, and stays in budget.
    for log in (tmp_path / "audit").glob("client-*/audit.jsonl"):
        charges = [
            json.loads(line)["data"]
            for line in log.read_text().splitlines()
            if json.loads(line)["type"] == "dp-charged"
        ]
        # the count's DP release, then one charge per round
        assert [c["kind"] for c in charges] == ["count"] + ["train"] * int(ROUNDS_FINE_TUNED), log
        last = charges[-1]
        events = [DpEvent.from_entry(e) for e in last["ledger-events"]]
        assert last["epsilon-after"] == pytest.approx(
            independent_epsilon(events, last["delta"]), rel=0.02
        )
        assert last["epsilon-after"] <= 8.0 + 1e-9


def test_model_keys_are_validated_with_the_fix():
    with pytest.raises(ConfigError, match="finetune-layers.*0 \\(frozen encoder"):
        RunConfig.from_dict({"model": "minilm", "finetune-layers": 7})
    with pytest.raises(ConfigError, match="'model' = 'bert'"):
        RunConfig.from_dict({"model": "bert"})


def test_a_missing_finetune_extra_says_how_to_install_it(monkeypatch):
    # As in a process that has not loaded the encoder: an earlier test in this pytest
    # process (an xdist worker runs any mix of modules) may have, and it stays cached.
    for cached in ("_encoder", "_tokenizer"):
        fresh = lru_cache(maxsize=1)(getattr(minilm, cached).__wrapped__)
        monkeypatch.setattr(minilm, cached, fresh)
    real_find_spec = minilm.importlib.util.find_spec
    monkeypatch.setattr(
        minilm.importlib.util,
        "find_spec",
        lambda name: None if name == minilm.PACKAGE else real_find_spec(name),
    )
    with pytest.raises(ConfigError, match=r"fedshield\[finetune\]"):
        ModelSpec(name="minilm").encode(["a review"], torch.device("cpu"))


def test_the_public_start_is_identical_on_every_node():
    spec = ModelSpec(name="minilm", finetune_layers=2)
    a, b = spec.build(3).state_dict(), spec.build(3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.count_nonzero(a["head.weight"]) == 0


def test_the_encoding_of_a_text_does_not_depend_on_its_batch():
    spec = ModelSpec(name="minilm", finetune_layers=0, max_tokens=32)
    # lengths from 1 token to past max_tokens: batches are cut to their longest text
    texts = ["a gripping, beautifully shot film", "dull and far too long", "fine", "", "x " * 50]
    together = spec.encode(texts, torch.device("cpu"))[0]
    for i, text in enumerate(texts):
        alone = spec.encode([text], torch.device("cpu"))[0]
        torch.testing.assert_close(torch.from_numpy(alone[0]), torch.from_numpy(together[i]))


def test_per_layer_clipping_keeps_the_total_norm_so_the_noise_and_epsilon_are_unchanged():
    spec = ModelSpec(name="minilm", finetune_layers=2)
    model = spec.build(2)
    clipping = spec.clipping(model, 1.5)
    norms = torch.tensor(clipping["max_grad_norm"])
    assert clipping["clipping"] == "per_layer"
    assert len(norms) == sum(1 for p in model.parameters() if p.requires_grad)
    assert float(torch.linalg.norm(norms)) == pytest.approx(1.5)
    groups = spec.param_groups(model, 1.0, 0.5)
    assert [len(g["params"]) for g in groups] == [len(norms) - 2, 2]  # layers, then head
    assert norms[-1] > norms[0]  # the head's two tensors get the larger per-tensor share
    assert ModelSpec().clipping(ModelSpec().build(2), 1.5) == {
        "max_grad_norm": 1.5,
        "clipping": "flat",
    }


def test_simulated_clients_get_a_gpu_share_only_when_a_gpu_exists(monkeypatch):
    from fedshield.simulation.engine import backend_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert backend_config(10, "auto")["client_resources"]["num_gpus"] == 0.0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert backend_config(10, "auto")["client_resources"]["num_gpus"] == 0.25
    assert backend_config(2, "cuda")["client_resources"]["num_gpus"] == 0.5
    assert backend_config(10, "cpu")["client_resources"]["num_gpus"] == 0.0
    # Attached to a cluster (--ray-address): its GPUs count, not this machine's.
    assert backend_config(10, "auto", gpus=0.0)["client_resources"]["num_gpus"] == 0.0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert backend_config(2, "auto", gpus=4.0)["client_resources"]["num_gpus"] == 0.5
    assert backend_config(2, "cpu", gpus=4.0)["client_resources"]["num_gpus"] == 0.0


def test_device_choice_fails_clearly_where_the_device_is_missing(monkeypatch):
    from fedshield.common.model import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ConfigError, match="CUDA is not available; use --device cpu or auto"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match="has 2 CUDA device"):
        resolve_device("cuda:2")


def test_encodings_are_kept_on_the_owners_disk_readable_by_it_alone(tmp_path, monkeypatch):
    from fedshield.client import encoding_cache
    from fedshield.client import owner as owner_module
    from fedshield.common.data import load_dataset
    from fedshield.common.splits import take

    dataset = take(load_dataset("rotten-tomatoes"), 20, seed=0)
    owner = owner_module.Owner(
        owner_id="o",
        dataset=dataset,
        ledger=None,
        device=torch.device("cpu"),
        audit_dir=tmp_path / "audit",
        cache_dir=tmp_path / "cache",
        keys=open_owner_keys(tmp_path / "keys"),
    )
    spec = ModelSpec(name="minilm", finetune_layers=1, max_tokens=16)
    first = encoding_cache.owner_inputs(owner, spec)
    (stored,) = (tmp_path / "cache").glob("encoded-*.npz")
    assert stored.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700

    encoding_cache._INPUT_CACHE.clear()  # a new process: only the disk remains

    def must_not_encode(*_):
        raise AssertionError("encoded again although the owner's cache holds it")

    monkeypatch.setattr(ModelSpec, "encode", must_not_encode)
    again = encoding_cache.owner_inputs(owner, spec)
    assert all((a == b).all() for a, b in zip(first, again, strict=True))
    encoding_cache._INPUT_CACHE.clear()
