"""Train a small MLP on remote_accelerator and check it against eager, step by step."""

import copy

import torch
from torch import nn

import genie


def main(steps: int = 5) -> None:
    torch.manual_seed(0)
    eager = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    remote = copy.deepcopy(eager).to("remote_accelerator")
    opt_e = torch.optim.Adam(eager.parameters(), lr=1e-2)
    opt_r = torch.optim.Adam(remote.parameters(), lr=1e-2)
    for step in range(steps):
        x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
        loss_e = nn.functional.cross_entropy(eager(x), y)
        opt_e.zero_grad()
        loss_e.backward()
        opt_e.step()
        loss_r = nn.functional.cross_entropy(remote(x.to("remote_accelerator")), y.to("remote_accelerator"))
        opt_r.zero_grad()
        loss_r.backward()
        opt_r.step()
        print(f"step {step}: eager {loss_e.item():.6f}  remote {loss_r.item():.6f}")
    stats = genie.capture_stats()
    print(f"captured {stats['total_captured']} ops, {stats['total_fallback']} fallbacks")


if __name__ == "__main__":
    main()
