"""How a pipeline stage's hidden state travels to the next stage on another node: as a Ray object
(the engine's first design) or as a gloo send/recv between the two stage processes (what the
engine does, chosen on these figures).

Two `ray.cluster_utils.Cluster` nodes on this machine hold one actor each (STRICT_SPREAD). Per
hop, the driver makes one call on each actor, as the engine's executor does per batch: with Ray
objects the first actor returns a (1, T, H) float32 tensor and the second takes it as its
argument; with gloo the first sends it and the second receives it into a buffer. Either way the
second actor returns a checksum, so both paths move the same bytes and pay the same two calls.
T runs from one decode row to a long prefill chunk. The table gives the median hop in
milliseconds and the ratio of the two (how many times faster gloo is).

    .venv/bin/python -m benchmarks.stage_transport [--hidden 4096] [--hops 30]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import timedelta

import ray
import torch
import torch.distributed as dist
from ray.cluster_utils import Cluster
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

# Tokens per batch: one decode row, a decode batch, a prefill chunk, a long prefill chunk.
TOKEN_COUNTS = (1, 16, 256, 2048)
_TIMEOUT = timedelta(seconds=60)


@ray.remote(num_cpus=1)
class StageEnd:
    """One end of a hop between two stages: it makes, sends, takes or receives hidden states."""

    def __init__(self, hidden_size: int) -> None:
        torch.set_num_threads(1)
        self.hidden_size = hidden_size

    def open_store(self) -> tuple[str, int]:
        """Rank 0: serve the rendezvous store on a port the system picks; its (host, port)."""
        host = ray.util.get_node_ip_address()
        self.store = dist.TCPStore(host, 0, 2, is_master=True, timeout=_TIMEOUT, wait_for_workers=False)
        return host, self.store.port

    def join(self, host: str, port: int, rank: int) -> None:
        if rank == 1:
            self.store = dist.TCPStore(host, port, 2, is_master=False, timeout=_TIMEOUT)
        dist.init_process_group("gloo", store=self.store, rank=rank, world_size=2, timeout=_TIMEOUT)

    def make(self, num_tokens: int) -> torch.Tensor:
        return torch.randn(1, num_tokens, self.hidden_size)

    def take(self, hidden: torch.Tensor) -> float:
        return float(hidden.sum())

    def send(self, num_tokens: int) -> None:
        dist.send(torch.randn(1, num_tokens, self.hidden_size), dst=1)

    def receive(self, num_tokens: int) -> float:
        hidden = torch.empty(1, num_tokens, self.hidden_size)
        dist.recv(hidden, src=0)
        return float(hidden.sum())


def _median_ms(hop: Callable[[], object], hops: int) -> float:
    hop()  # warm the path (connections, buffers) before timing it
    times = []
    for _ in range(hops):
        started = time.perf_counter()
        hop()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=4096, help="hidden size H")
    parser.add_argument("--hops", type=int, default=30, help="timed hops per size and transport")
    args = parser.parse_args()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    group = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    ray.get(group.ready(), timeout=120)
    try:
        first, second = (
            StageEnd.options(
                scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index)
            ).remote(args.hidden)
            for index in range(2)
        )
        host, port = ray.get(first.open_store.remote())
        ray.get([first.join.remote(host, port, 0), second.join.remote(host, port, 1)])
        print(f"\nhidden size {args.hidden}, float32; medians of {args.hops} hops between two nodes")
        print("| tokens | bytes | Ray object (ms) | gloo send/recv (ms) | Ray / gloo |")
        print("| --- | --- | --- | --- | --- |")
        for num_tokens in TOKEN_COUNTS:
            by_object = _median_ms(lambda: ray.get(second.take.remote(first.make.remote(num_tokens))), args.hops)
            by_gloo = _median_ms(
                lambda: ray.get([first.send.remote(num_tokens), second.receive.remote(num_tokens)]), args.hops
            )
            size = num_tokens * args.hidden * 4
            print(f"| {num_tokens} | {size:,} | {by_object:.2f} | {by_gloo:.2f} | {by_object / by_gloo:.2f}x |")
    finally:
        remove_placement_group(group)
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
