"""The in-process federated loop shared by the bench scripts (no Flower).

Runs the product's local training (``fedshield.client.train.train_locally``) at every
simulated owner and aggregates like the server's ``fedavg`` (Flower's FedAvgM: weighted
mean of the updates, then server momentum and server learning rate). Noise per owner is
derived as the ClientApp does (``client/app.py`` ``training_settings``): the smallest
noise for which ``rounds`` rounds of that owner's training compose to the target epsilon.
"""

from __future__ import annotations

import torch

from fedshield.client.train import calibrated, train_locally
from fedshield.common.model import build_model
from fedshield.common.privacy import epsilon_spent


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def run_federation(
    parts,
    val,
    settings,
    rounds,
    server_lr,
    server_momentum,
    epsilon,
    delta,
    seed,
    num_classes: int = 2,
    score=None,
    server_opt: str = "sgd",
    tau: float = 1e-3,
    initial_model=None,
    averages: tuple[float, ...] = (),
):
    """Train ``rounds`` rounds over ``parts`` [(x, y), ...]; returns (curve, max epsilon).

    ``settings`` is one TrainSettings for every owner, or a list with one per owner.
    ``initial_model`` (default: zeros) is the global model before round 1.
    ``curve`` is the global model's accuracy on ``val`` = (x, y) after every round, or
    ``score(model)`` where given. For each beta in ``averages`` the server also keeps an
    exponential moving average of the global models (bias-corrected, a post-processing of
    the released updates); ``run_federation.averaged[beta]`` is its last state.
    """
    score = score or (lambda m: accuracy(m, *val))
    per_owner = settings if isinstance(settings, list) else [settings] * len(parts)
    model = initial_model or build_model(parts[0][0].shape[1], num_classes)
    velocity = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    second = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    per_owner = [
        calibrated(s, len(x), rounds, epsilon, delta) if s.dp else s
        for s, (x, _) in zip(per_owner, parts, strict=True)
    ]
    curve = []
    eps = []
    averaged = {
        b: {k: torch.zeros_like(v) for k, v in model.state_dict().items()} for b in averages
    }
    for rnd in range(rounds):
        global_state = {k: v.clone() for k, v in model.state_dict().items()}
        total = sum(len(x) for x, _ in parts)
        delta_sum = {k: torch.zeros_like(v) for k, v in global_state.items()}
        eps = []
        for i, (x, y) in enumerate(parts):
            local = build_model(x.shape[1], num_classes)
            local.load_state_dict(global_state)
            out = train_locally(local, (x,), y, per_owner[i], torch.device("cpu"))
            if out.dp_event:
                eps.append(epsilon_spent([out.dp_event] * (rnd + 1), delta))
            inner = getattr(local, "_module", local)
            for k, v in inner.state_dict().items():
                delta_sum[k] += (v.detach() - global_state[k]) * (len(x) / total)
        new_state = {}
        for k in global_state:
            if server_opt == "sgd":
                velocity[k] = server_momentum * velocity[k] + delta_sum[k]
                new_state[k] = global_state[k] + server_lr * velocity[k]
                continue
            # Flower's FedAdam / FedYogi on the pseudo-gradient (no bias correction)
            velocity[k] = server_momentum * velocity[k] + (1 - server_momentum) * delta_sum[k]
            square = delta_sum[k] ** 2
            if server_opt == "adam":
                second[k] = 0.99 * second[k] + 0.01 * square
            else:
                second[k] = second[k] - 0.01 * square * torch.sign(second[k] - square)
            new_state[k] = global_state[k] + server_lr * velocity[k] / (second[k].sqrt() + tau)
        model.load_state_dict(new_state)
        for beta, avg in averaged.items():
            for k, v in new_state.items():
                avg[k] = beta * avg[k] + (1 - beta) * v
        curve.append(score(model))
    run_federation.averaged = {
        beta: {k: v / (1 - beta**rounds) for k, v in avg.items()} for beta, avg in averaged.items()
    }
    return curve, (max(eps) if eps else 0.0)
