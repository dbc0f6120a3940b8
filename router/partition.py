"""Which workers a router schedules when several router replicas serve one pool.

Routers that each schedule alone over shared workers form smaller batches per pass and lose
badly (docs/scheduling.md, router scale-out); a router that owns a share of the workers is the
single router of a smaller fleet. So:

- targets are matched to the live routers by rendezvous weight `weight(router, target)`, each
  router taking an equal share (the routers get equal shares of the requests from their
  Service): pairs are taken from the heaviest down while the target is free and the router is
  under its share. Every router computes the same matching from the same router set without
  talking to the others. Pure rendezvous (each target to its heaviest router) moves nothing but
  a leaving router's targets, but its shares are lumpy: over 8 targets, 2 routers split 6/2 or
  worse in 3 draws of 10, which overloads the small share at high load; equal shares cost a few
  more moves when a router leaves: besides its own targets, on average 0.1-0.45 times as many
  of the others' rebalance (tests/test_router_partition.py measures both);
- a router that owns no target while targets exist (more routers than targets, or an unlucky
  draw) takes the one target it weighs highest, shared with that target's owner: a router with
  no target could serve nothing, and sharing one target each keeps the loss of sharing to the
  routers that have to share (the alternative, every router seeing every target, is the
  measured 1.8-3.4x);
- a draft goes with the target(s) it is dealt to when the whole pool's drafts are dealt to the
  whole pool's targets (`replicas.drafts_for`): each router keeps the pool's drafts per target,
  a router with a target always has a draft while drafts exist (else its k would be 0), and a
  draft dealt to targets of several routers (fewer drafts than targets) serves each of them,
  as it serves several targets under one router.

One router owns everything: its share is the whole pool, as without partitioning.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from specd.router.replicas import drafts_for

Endpoints = dict[str, list[str]]


def weight(router: str, worker: str) -> int:
    """The rendezvous weight of a (router, worker) pair: a stable hash, the same in every process."""
    digest = hashlib.blake2b(f"{router}\0{worker}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owners(targets: Collection[str], routers: Collection[str]) -> dict[str, str]:
    """target -> the router that owns it: every router owns len(targets) // len(routers) targets or
    one more, matched by rendezvous weight, heaviest pairs first (ties go to the greater names)."""
    base, extra = divmod(len(targets), len(routers))
    owned = dict.fromkeys(routers, 0)
    out: dict[str, str] = {}
    for _, router, target in sorted(((weight(r, t), r, t) for r in routers for t in targets), reverse=True):
        full = owned[router] == base + 1 or (owned[router] == base and extra == 0)
        if target in out or full:
            continue
        out[target] = router
        owned[router] += 1
        if owned[router] == base + 1:  # one of the `extra` larger shares is taken
            extra -= 1
    return out


def targets_of(router: str, targets: Collection[str], routers: Collection[str]) -> list[str]:
    """The targets `router` schedules among `routers` (it counts as one of them in any case)."""
    owner = owners(targets, {*routers, router})
    mine = [t for t in targets if owner[t] == router]
    if not mine and targets:
        mine = [max(targets, key=lambda t: (weight(router, t), t))]
    return sorted(mine)


@dataclass(eq=False)
class _Worker:
    """An address in the shape `drafts_for` deals (it reads `address`)."""

    address: str
    pinned: set[str] = field(default_factory=set)


def drafts_of(my_targets: Iterable[str], targets: Collection[str], drafts: Collection[str]) -> list[str]:
    """The drafts dealt to `my_targets` when all `drafts` are dealt to all `targets`."""
    pool = [_Worker(t) for t in sorted(targets)]
    dealt = [_Worker(d) for d in sorted(drafts)]
    return sorted({d.address for target in my_targets for d in drafts_for(target, pool, dealt)})


def share(endpoints: Endpoints, routers: Collection[str], me: str) -> Endpoints:
    """`endpoints` ({role: addresses}) cut down to what router `me` schedules among `routers`
    (the live router replicas; `me` counts whether or not it is among them yet). Without
    targets there is nothing to share: the endpoints come back as they are."""
    out = {role: list(addresses) for role, addresses in endpoints.items()}
    targets = endpoints.get("target", [])
    if targets:
        out["target"] = targets_of(me, targets, routers)
        if "draft" in endpoints:
            out["draft"] = drafts_of(out["target"], targets, endpoints["draft"])
    return out
