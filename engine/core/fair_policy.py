"""Fair sharing of the engine's steps across tenants: a Virtual Token Counter (VTC).

After "Fairness in Serving Large Language Models" (Sheng et al., OSDI 2024). Plain Python, no torch.

Each tenant has a virtual counter, the weighted service it has received:

    counter += (PROMPT_TOKEN_COST * prompt tokens computed + OUTPUT_TOKEN_COST * tokens generated) / weight

The waiting tenant with the least counter is admitted next, FIFO within a tenant, so a tenant that
floods the queue gets its turns no more often than one that sends a request now and then; an
engine with room still admits whoever waits (work-conserving). A tenant that becomes active (it
had nothing waiting or running) starts no lower than the least counter of the tenants active
then: time spent idle banks no credit.

A tenant's fair share is its weighted share of the batch's sequence slots, water-filled: never
more than it asks for, what it leaves goes to the others. Under continuous scheduling the
scheduler preempts a running sequence of a tenant above its share to make room for one of a
tenant below it (`fair_share_victim`).

`WaitingQueue(fair=False)` books every request under one tenant: the same mechanism is then FCFS.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from engine.core.sequence import DEFAULT_TENANT, Sequence

__all__ = ["OUTPUT_TOKEN_COST", "PROMPT_TOKEN_COST", "TenantState", "WaitingQueue", "fair_shares"]

# What one token adds to its tenant's counter, before dividing by the tenant's weight: the paper's
# w_p = 1 and w_q = 2. A prompt token is one row of a prefill that computes many in parallel; a
# generated token takes a whole decode step (a pass over the weights and the sequence's KV) and
# holds a batch slot for it, so it costs more.
PROMPT_TOKEN_COST = 1.0
OUTPUT_TOKEN_COST = 2.0


@dataclass
class TenantState:
    """One tenant's standing in the fair order."""

    # Scheduling weight: the one its latest request carried.
    weight: float
    # Weighted service received (see PROMPT_TOKEN_COST); the least is admitted first.
    counter: float = 0.0
    # Its waiting sequences, the next to admit first (a preempted one goes back to the front).
    waiting: deque[Sequence] = field(default_factory=deque)
    num_running: int = 0

    @property
    def is_active(self) -> bool:
        return bool(self.waiting) or self.num_running > 0

    @property
    def demand(self) -> int:
        """The sequence slots it would fill if it had them all."""
        return self.num_running + len(self.waiting)


def fair_shares(weights: dict[str, float], demands: dict[str, int], num_slots: int) -> dict[str, float]:
    """Each tenant's share of `num_slots` (keys of `weights`, which `demands` also has), by
    water-filling: shares proportional to weight, each capped at the tenant's demand, and what a
    capped tenant leaves shared again by the rest."""
    shares: dict[str, float] = {}
    uncapped = list(weights)  # a list, not a set: the same float sums in every run
    slots_left = float(num_slots)
    while uncapped:
        slots_per_weight = slots_left / sum(weights[name] for name in uncapped)
        capped = [name for name in uncapped if demands[name] <= weights[name] * slots_per_weight]
        if not capped:
            shares.update((name, weights[name] * slots_per_weight) for name in uncapped)
            break
        for name in capped:
            shares[name] = float(demands[name])
            slots_left -= demands[name]
        uncapped = [name for name in uncapped if name not in capped]
    return shares


class WaitingQueue:
    """The sequences waiting for admission, per tenant, in fair order, and the tenants' counters.

    The scheduler reports each move of a sequence: `add` (arrival), `take` (admitted), `requeue`
    (preempted), `remove` (ended while waiting), `release` (ended while running); and each chunk it
    schedules (`charge_chunk`).
    """

    def __init__(self, fair: bool = True) -> None:
        # False books every sequence under DEFAULT_TENANT: the order is then arrival order (a
        # preempted sequence first), and no tenant is ever above its share.
        self.fair = fair
        # Every tenant seen: an idle tenant's counter is kept for when it comes back.
        self.tenants: dict[str, TenantState] = {}
        # The tenants with a waiting or running sequence.
        self._active: dict[str, TenantState] = {}
        self._num_waiting = 0

    def __len__(self) -> int:
        return self._num_waiting

    def __iter__(self) -> Iterator[Sequence]:
        """Tenant by tenant in the current fair order, FIFO within each."""
        for state in sorted(self._waiting_tenants(), key=_fair_order):
            yield from state.waiting

    # ----- moves --------------------------------------------------------------------------

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence last in its tenant's queue. A tenant that becomes active starts no
        lower than the least counter of the tenants active now."""
        name = self._tenant_of(seq)
        state = self.tenants.setdefault(name, TenantState(seq.tenant_weight))
        state.weight = seq.tenant_weight
        if not state.is_active:
            if self._active:
                state.counter = max(state.counter, min(other.counter for other in self._active.values()))
            self._active[name] = state
        state.waiting.append(seq)
        self._num_waiting += 1

    def take(self, seq: Sequence) -> None:
        """`seq`, the one `peek` named, is admitted."""
        state = self._state_of(seq)
        assert state.waiting[0] is seq, f"{seq.request_id} is not the next of its tenant"
        state.waiting.popleft()
        state.num_running += 1
        self._num_waiting -= 1

    def requeue(self, seq: Sequence) -> None:
        """`seq` was preempted: it goes back to the front of its tenant's queue."""
        state = self._state_of(seq)
        state.waiting.appendleft(seq)
        state.num_running -= 1
        self._num_waiting += 1

    def remove(self, seq: Sequence) -> None:
        """`seq` ended while waiting (an abort)."""
        name = self._tenant_of(seq)
        self.tenants[name].waiting.remove(seq)
        self._num_waiting -= 1
        self._deactivate_if_idle(name)

    def release(self, seq: Sequence) -> None:
        """`seq` ended while running."""
        name = self._tenant_of(seq)
        self.tenants[name].num_running -= 1
        self._deactivate_if_idle(name)

    # ----- service ------------------------------------------------------------------------

    def charge(self, seq: Sequence, num_prompt_tokens: int, num_output_tokens: int) -> None:
        """Add service to `seq`'s tenant's counter."""
        state = self._state_of(seq)
        cost = PROMPT_TOKEN_COST * num_prompt_tokens + OUTPUT_TOKEN_COST * num_output_tokens
        state.counter += cost / state.weight

    def charge_chunk(self, seq: Sequence, num_new_tokens: int) -> None:
        """Charge a chunk of `seq` as it is scheduled (the work is committed then, and the rest of
        the step's admissions see it): its prompt tokens beyond the most `seq` ever had computed,
        and the token it samples when it reaches `seq`'s last token. Prefix-cache hits, and a
        recompute after preemption, cost nothing."""
        start = seq.num_computed_tokens
        end = start + num_new_tokens
        prompt_end = min(end, seq.num_prompt_tokens)
        num_prompt_tokens = max(0, prompt_end - max(start, seq.max_num_computed_prompt_tokens))
        seq.max_num_computed_prompt_tokens = max(seq.max_num_computed_prompt_tokens, prompt_end)
        self.charge(seq, num_prompt_tokens, 1 if end == seq.num_tokens else 0)

    # ----- decisions ----------------------------------------------------------------------

    def peek(self) -> Sequence | None:
        """The next sequence to admit: the head of the waiting tenant with the least counter (ties:
        the one whose head arrived first). None when nothing waits."""
        waiting = self._waiting_tenants()
        return min(waiting, key=_fair_order).waiting[0] if waiting else None

    def preemption_victim(self, candidates: list[Sequence]) -> Sequence:
        """Whom to preempt when the KV pool runs out: of `candidates` (running sequences in
        admission order, the newest last), the newest of the tenant with the highest counter (ties:
        the newest)."""
        victim = candidates[-1]
        highest = self._state_of(victim).counter
        for seq in reversed(candidates):
            counter = self._state_of(seq).counter
            if counter > highest:
                victim, highest = seq, counter
        return victim

    def fair_share_victim(self, candidate: Sequence, running: list[Sequence], num_slots: int) -> Sequence | None:
        """A running sequence to preempt to make room for `candidate`, the next to admit, or None.

        Shares are of `num_slots`, among the active tenants. Only a tenant below its share gains a
        slot, and only the tenant furthest above its share (ties: the highest counter) gives up
        one, its newest. Two more rules keep a slot from changing hands back and forth: the
        candidate's tenant, one sequence richer, must still be less above its share than the
        victim's tenant was (each move then shrinks the sum of squared excesses); and the victim,
        back in its queue, must come after the candidate in the fair order (else it would be
        readmitted in the candidate's place).
        """
        tenants = self._active
        shares = fair_shares(
            {name: state.weight for name, state in tenants.items()},
            {name: state.demand for name, state in tenants.items()},
            num_slots,
        )
        excess = {name: state.num_running - shares[name] for name, state in tenants.items()}
        gainer = self._tenant_of(candidate)
        # `running` leaves out the sequences of a batch in flight, which cannot be preempted: a
        # tenant with none left in it gives nothing now.
        preemptable = {self._tenant_of(seq) for seq in running}
        givers = [name for name in tenants if name in preemptable]
        if excess[gainer] >= 0 or not givers:
            return None
        giver = max(givers, key=lambda name: (excess[name], tenants[name].counter))
        if excess[giver] <= 0 or excess[gainer] + 1 >= excess[giver]:
            return None
        victim = next(seq for seq in reversed(running) if self._tenant_of(seq) == giver)
        # The admission right after: the victim, back at its queue's head, against the candidate.
        giver_after = _order_key(tenants[giver], tenants[giver].num_running - 1, victim.arrival_time)
        gainer_now = _order_key(tenants[gainer], tenants[gainer].num_running, candidate.arrival_time)
        if giver_after <= gainer_now:
            return None
        return victim

    # ----- helpers ------------------------------------------------------------------------

    def _tenant_of(self, seq: Sequence) -> str:
        return seq.tenant if self.fair else DEFAULT_TENANT

    def _state_of(self, seq: Sequence) -> TenantState:
        return self.tenants[self._tenant_of(seq)]

    def _waiting_tenants(self) -> list[TenantState]:
        return [state for state in self._active.values() if state.waiting]

    def _deactivate_if_idle(self, name: str) -> None:
        if not self.tenants[name].is_active:
            del self._active[name]


def _fair_order(state: TenantState) -> tuple[float, float, float]:
    """Sort key of a tenant with waiting sequences: least counter first; on a tie (a newcomer is
    lifted to exactly the least counter), the fewest running sequences per unit of weight, then
    the earliest head."""
    return _order_key(state, state.num_running, state.waiting[0].arrival_time)


def _order_key(state: TenantState, num_running: int, arrival_time: float) -> tuple[float, float, float]:
    return state.counter, num_running / state.weight, arrival_time
