"""``LoopChannel``, workers -> loop: one wake-up per burst of posts, post order kept, and a long burst drained in
batches of ``DRAIN_BATCH``, the rest left to the loop's next iteration (so the loop reads its sockets in between)
without another wake-up. The loop's two scheduling calls are recorded and run by hand: each step is deterministic."""

from __future__ import annotations

from collections.abc import Callable

from asyncwsgi.wsgi.bridge import DRAIN_BATCH, LoopChannel


class Recorder:
    def __init__(self) -> None:
        self.threadsafe: list[Callable[[], object]] = []  # loop.call_soon_threadsafe: wakes the loop
        self.soon: list[Callable[[], object]] = []  # loop.call_soon: the loop's next iteration, no wake-up
        self.channel = LoopChannel(self.threadsafe.append, self.soon.append)
        self.seen: list[int] = []
        self.flushes: list[int] = []  # how many messages had been handled when each after_drain callback ran
        self._registered = False

    def handle(self, i: int) -> None:
        """A message whose handler, like a connection's, asks for one callback at the end of the drain."""
        self.seen.append(i)
        if not self._registered:
            self._registered = True
            self.channel.after_drain(self._flush)

    def _flush(self) -> None:
        self._registered = False
        self.flushes.append(len(self.seen))


def test_a_burst_is_drained_in_batches_each_in_the_loops_next_iteration() -> None:
    r = Recorder()
    n = 2 * DRAIN_BATCH + 3
    for i in range(n):
        r.channel.post(r.handle, i)
    assert len(r.threadsafe) == 1, "a burst of posts must cost one wake-up"
    assert r.soon == []

    r.threadsafe.pop()()
    assert r.seen == list(range(DRAIN_BATCH))
    assert r.flushes == [DRAIN_BATCH], "after_drain callbacks run at the end of each batch"
    assert len(r.soon) == 1 and r.threadsafe == [], "the rest goes to the next iteration, without a wake-up"

    r.soon.pop()()
    assert r.seen == list(range(2 * DRAIN_BATCH))
    assert len(r.soon) == 1

    r.soon.pop()()
    assert r.seen == list(range(n))
    assert r.soon == [] and r.threadsafe == [], "nothing left: nothing scheduled"
    assert r.flushes == [DRAIN_BATCH, 2 * DRAIN_BATCH, n]

    r.channel.post(r.handle, n)  # the channel is idle again: the next post wakes the loop
    assert len(r.threadsafe) == 1
    r.threadsafe.pop()()
    assert r.seen == list(range(n + 1))


def test_a_post_during_a_batch_keeps_its_order_and_schedules_one_drain() -> None:
    r = Recorder()
    late: list[int] = []

    def handle_and_post(i: int) -> None:
        r.handle(i)
        if i == 1:  # a worker posts while the loop drains: it wakes the loop, and no second drain is added
            r.channel.post(r.handle, 1000)
            late.append(len(r.threadsafe))

    for i in range(DRAIN_BATCH + 2):
        r.channel.post(handle_and_post, i)
    r.threadsafe.pop()()
    assert late == [1]
    assert r.soon == [], "a drain was already scheduled by the post: no second one"
    r.threadsafe.pop()()
    assert r.seen == [*range(DRAIN_BATCH + 2), 1000]
    assert r.soon == [] and r.threadsafe == []


def test_a_short_burst_is_drained_at_once() -> None:
    r = Recorder()
    for i in range(DRAIN_BATCH):
        r.channel.post(r.handle, i)
    r.threadsafe.pop()()
    assert r.seen == list(range(DRAIN_BATCH))
    assert r.soon == [] and r.threadsafe == []


def test_with_one_call_for_both_as_trio_has_the_rest_still_goes_to_the_next_iteration() -> None:
    """trio has one way to schedule a callable on its loop, from any thread: ``run_sync_soon``, given twice."""
    calls: list[Callable[[], object]] = []
    seen: list[int] = []
    channel = LoopChannel(calls.append, calls.append)
    for i in range(DRAIN_BATCH + 1):
        channel.post(seen.append, i)
    calls.pop()()
    assert seen == list(range(DRAIN_BATCH))
    assert len(calls) == 1
    calls.pop()()
    assert seen == list(range(DRAIN_BATCH + 1))
    assert calls == []


def test_at_most_one_continuation_is_pending_whatever_the_posts() -> None:
    """Posts keep coming while a long backlog drains: each drain leaves at most one continuation behind, so the
    backlog still goes DRAIN_BATCH (or, with a post's own drain, twice that) per loop iteration, never more."""
    r = Recorder()
    for i in range(5 * DRAIN_BATCH):
        r.channel.post(r.handle, i)
    posted = 5 * DRAIN_BATCH
    for step in range(50):  # bounded
        if not (r.threadsafe or r.soon):
            break
        assert len(r.soon) <= 1 and len(r.threadsafe) <= 1, (len(r.soon), len(r.threadsafe))
        due = r.soon + r.threadsafe if step % 2 else r.threadsafe + r.soon  # one loop iteration, either order
        r.soon.clear()
        r.threadsafe.clear()
        before = len(r.seen)
        for callback in due:
            callback()
        assert len(r.seen) - before <= len(due) * DRAIN_BATCH
        if posted < 8 * DRAIN_BATCH:
            r.channel.post(r.handle, posted)  # a worker posts during every iteration
            posted += 1
    assert r.seen == list(range(posted))
    assert r.soon == [] and r.threadsafe == []


def test_posts_after_the_loop_closed_are_dropped_even_with_a_continuation_pending() -> None:
    """The loop stopped with the rest of a burst scheduled; it never runs. A later post must not keep its message
    (and the backlog) forever: it tries the loop, which refuses, and the channel lets go of what it held."""
    closed = False
    threadsafe: list[Callable[[], object]] = []
    soon: list[Callable[[], object]] = []

    def call_soon_threadsafe(callback: Callable[[], object]) -> None:
        if closed:
            raise RuntimeError("Event loop is closed")
        threadsafe.append(callback)

    channel = LoopChannel(call_soon_threadsafe, soon.append)
    seen: list[int] = []
    for i in range(DRAIN_BATCH + 5):
        channel.post(seen.append, i)
    threadsafe.pop()()
    assert len(soon) == 1  # the rest of the burst, pending
    closed = True  # ... and the loop closes without running it
    channel.post(seen.append, 1000)
    assert len(channel._items) == 0, "messages kept after the loop closed"
