"""Train a small MLP with the device in another process: a genie server owns it, the weights and the
optimizer state stay there, each step is one round trip, and the sync report shows where the
program waited. Checked against eager step by step.

    python example/remote_server.py            # starts its own server
    GENIE_SERVERS=HOST:PORT GENIE_SERVER_TOKEN=... python example/train_mlp.py   # any program, unmodified
"""

import copy

import torch
from torch import nn

import genie


def main(steps: int = 5) -> None:
    torch.manual_seed(0)
    eager = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 4))
    with genie.start_server(device="cpu") as srv, genie.remote(srv), genie.sync_points() as report:
        print(f"server {srv.address} (pid {srv.pid})")
        model = copy.deepcopy(eager).to("remote_accelerator")  # goes up with the first step, once
        opt_e = torch.optim.AdamW(eager.parameters(), lr=1e-2)
        opt_r = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for step in range(steps):
            x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
            loss_e = nn.functional.cross_entropy(eager(x), y)
            opt_e.zero_grad()
            loss_e.backward()
            opt_e.step()
            loss_r = nn.functional.cross_entropy(model(x.to("remote_accelerator")), y.to("remote_accelerator"))
            opt_r.zero_grad()
            loss_r.backward()
            opt_r.step()
            got = loss_r.item()  # the one sync of the step: the plan runs there, the loss comes back
            assert got == loss_e.item(), (step, got, loss_e.item())
            print(f"step {step}: loss {got:.6f} (eager {loss_e.item():.6f})")
        stats = genie.server_stats()
        print(f"resident on the server: {stats['resident_bytes']} bytes in {stats['resident_values']} values")
    print(report.table())


if __name__ == "__main__":
    main()
