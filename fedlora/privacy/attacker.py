"""The membership-inference attacker h: an MLP on the flattened per-element loss map.

The same architecture serves as each client's proxy attacker h_omega during SMP-LoRA
training and as the evaluation's fresh attacker h' (paper: [512, 256, 2], ReLU, dropout
0.5, softmax). Class 1 is "member". It lives on the device of the loss maps it sees (the
runtime's); its state, Adam moments included, round-trips through a flat ``{name: tensor}`` dict
of CPU tensors so that Flower's ``context.state`` can keep it across rounds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from ..device import to_float, to_host

HIDDEN = (512, 256)
MEMBER, NONMEMBER = 1, 0
_OPT_PREFIX = "adam."
_NET_PREFIX = "mlp."


def membership_labels(n_members: int, n_nonmembers: int) -> torch.Tensor:
    """Class labels of a batch laid out members first, then non-members."""
    return torch.tensor([MEMBER] * n_members + [NONMEMBER] * n_nonmembers)


class MembershipMLP(nn.Module):
    def __init__(self, in_features: int, dropout: float = 0.5, hidden: tuple[int, ...] = HIDDEN):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, 2))
        self.net = nn.Sequential(*layers)
        self.in_features = in_features

    def forward(self, loss_map: torch.Tensor) -> torch.Tensor:
        """(B, ...) loss maps -> (B, 2) logits."""
        return self.net(loss_map.flatten(1))

    def member_score(self, loss_map: torch.Tensor) -> torch.Tensor:
        """P(member) per sample: the score ROC curves are drawn from."""
        return self(loss_map).softmax(dim=1)[:, MEMBER]


CHANCE_CE = math.log(2.0)  # the CE of a member the attacker scores at P(member) = 1/2


def member_cross_entropy(attacker: MembershipMLP, loss_map: torch.Tensor, cap_at_chance: bool = False) -> torch.Tensor:
    """CE of the attacker labelling a batch of members as members, differentiable w.r.t. the
    map but not the attacker (held fixed during the LoRA step). Equals -G restricted to members,
    as in the released code (no 1/2 factor). ``cap_at_chance``: each member's CE is capped at
    log 2, so a member already scored at or below chance adds no reward and no gradient."""
    params = dict(attacker.named_parameters())
    frozen = {k: v.detach() for k, v in params.items()}
    logits = torch.func.functional_call(attacker, frozen, (loss_map,))
    labels = torch.full((len(loss_map),), MEMBER, dtype=torch.long, device=loss_map.device)
    if not cap_at_chance:
        return F.cross_entropy(logits, labels)
    return F.cross_entropy(logits, labels, reduction="none").clamp_max(CHANCE_CE).mean()


class ProxyAttacker:
    """h_omega with its Adam optimiser, trained by CE on balanced member / non-member batches."""

    def __init__(
        self,
        in_features: int,
        lr: float,
        weight_decay: float,
        dropout: float,
        seed: int,
        device: torch.device | str = "cpu",
        hidden: tuple[int, ...] = HIDDEN,
    ):
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.model = MembershipMLP(in_features, dropout, hidden)  # drawn on the CPU: the same init on any device
        torch.random.set_rng_state(gen_state)
        self.model.to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr, weight_decay=weight_decay)
        self.updates = 0

    def step(self, loss_maps: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """One ascent step on G (= one descent step on the CE)."""
        self.model.train()
        logits = self.model(loss_maps.detach().float())
        labels = labels.to(logits.device)
        loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.updates += 1
        acc = (logits.argmax(1) == labels).float().mean()
        return {"attacker_ce": to_float(loss.detach()), "attacker_acc": to_float(acc)}

    @torch.no_grad()
    def accuracy(self, loss_maps: torch.Tensor, labels: torch.Tensor) -> float:
        self.model.eval()
        logits = self.model(loss_maps.float())
        acc = (logits.argmax(1) == labels.to(logits.device)).float().mean()
        self.model.train()
        return to_float(acc)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """CPU copies (``load_state_dict`` moves them to the attacker's device)."""
        out = {_NET_PREFIX + k: to_host(v).clone() for k, v in self.model.state_dict().items()}
        for idx, slot in self.optimizer.state_dict()["state"].items():
            for name, value in slot.items():
                out[f"{_OPT_PREFIX}{idx}.{name}"] = to_host(torch.as_tensor(value)).clone()
        out["updates"] = torch.tensor(self.updates, dtype=torch.int64)
        return out

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        net = {k[len(_NET_PREFIX) :]: v for k, v in state.items() if k.startswith(_NET_PREFIX)}
        missing = set(self.model.state_dict()) - set(net)
        if missing:
            raise ValueError(f"attacker state lacks {sorted(missing)[:3]}; was it saved by another architecture?")
        self.model.load_state_dict(net)
        slots: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            if key.startswith(_OPT_PREFIX):
                idx, name = key[len(_OPT_PREFIX) :].split(".", 1)
                slots.setdefault(int(idx), {})[name] = value.clone()
        opt_state = self.optimizer.state_dict()
        opt_state["state"] = slots
        self.optimizer.load_state_dict(opt_state)
        self.updates = int(state["updates"]) if "updates" in state else 0
