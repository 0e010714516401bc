"""Device values on the host in one transfer: on a GPU each read is a sync, so the loop makes one
per log point and one per validation, each commented where it happens."""

from __future__ import annotations

import torch


def read(*groups: dict) -> list[dict]:
    """Each dict of device tensors (vectors or scalars) with host values instead, all read in one
    device→host transfer."""
    flat = [t.detach().reshape(-1).double() for g in groups for t in g.values()]
    values = torch.cat(flat).tolist() if flat else []
    out, i = [], 0
    for g in groups:
        host = {}
        for key, t in g.items():
            n = t.numel()
            host[key] = values[i : i + n] if t.dim() else values[i]
            i += n
        out.append(host)
    return out
