"""Dynamic batching: requests from many connections share one model call.

A :class:`DynamicBatcher` owns one inference thread. Each item waits in a queue; the thread takes the first one,
then whatever else arrives within ``batch_timeout`` seconds up to ``max_batch_size``, runs ``predict`` on the list,
and hands each caller its own result. While the model runs, new requests queue up, so under load batches fill
without waiting at all. The thread keeps running until :meth:`close`, after the server has finished its requests.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import Any, Callable, Sequence

_STOP = object()


class DynamicBatcher:
    """One model, one thread, batches of up to ``max_batch_size`` items gathered for at most ``batch_timeout`` s.

    Args:
        predict: a list of decoded items to a list of results, in the same order.
        max_batch_size: items per model call at most.
        batch_timeout: seconds to wait for more items after the first one.
        on_batch: called with each batch's size (metrics).
        name: the thread's name.
    """

    def __init__(self, predict: Callable[[list], Sequence], max_batch_size: int, batch_timeout: float,
                 on_batch: Callable[[int], None] | None = None, name: str = "batcher"):
        self.predict, self.max_batch_size, self.batch_timeout = predict, max(1, max_batch_size), batch_timeout
        self.on_batch = on_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    async def submit(self, items: Sequence) -> list:
        """The results of ``items`` (each one queued on its own, so a large request shares batches fairly)."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, future in zip(items, futures):
            self._queue.put((item, future, loop))
        return list(await asyncio.gather(*futures))

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=10)

    def _gather(self, first) -> tuple[list, bool]:
        batch, stop = [first], False
        deadline = time.monotonic() + self.batch_timeout
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stop = self._gather(first)
            live = [entry for entry in batch if not entry[1].cancelled()]  # clients that went away cost nothing
            if not live:
                continue
            if self.on_batch:
                self.on_batch(len(live))
            try:
                results: Sequence[Any] = self.predict([item for item, _, _ in live])
                error = None
            except Exception as exc:  # noqa: BLE001 - handed to every caller of the batch, the thread goes on
                results, error = [None] * len(live), exc
            for (_, future, loop), result in zip(live, results):
                loop.call_soon_threadsafe(_settle, future, result, error)


def _settle(future: asyncio.Future, result, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
