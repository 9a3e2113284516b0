"""CUDA graphs for repeated input shapes: a bounded, per-shape cache of captured graphs with static input buffers.

A model call launches a few hundred kernels; at ADE20K sizes (512x683) the GPU finishes them faster than Python can
launch them, so it idles most of the time. A CUDA graph records the launches of one call once and replays them with a
single launch. A graph is bound to the addresses and shapes it was captured with, so [`CUDAGraphRunner`] keeps one
graph per input shape (and dtype, strides, device), each with a static input buffer that every call copies its
input into, and returns a copy of the graph's static output (the next replay overwrites it).

Policy (the "bad input" rules of issue 21):

- a shape seen for the first time runs eagerly (one-off sizes, e.g. photos of many sizes, are not worth a capture);
  the second call with that shape captures a graph (after warm-up calls on a side stream, as PyTorch's CUDA graph
  documentation requires) and every later call replays it;
- inputs with more than `max_elements` elements per channel (batch x height x width) always run eagerly: a graph
  keeps its activations' memory for as long as it lives;
- at most `max_graphs` graphs are kept; the least recently used one is dropped when another shape is captured (a
  dropped shape counts as unseen again);
- a capture that fails (out of memory, an operation that cannot be captured) marks the shape as eager-only, with a
  warning, and the call runs eagerly.

Replays of all graphs share one memory pool (`torch.cuda.graph_pool_handle()`): intermediate buffers are reused
between shapes, and each graph's static input and output stay allocated while it is cached. Calls are serialised by a
lock, and each replay waits for the previous one on the GPU, so replays never overlap (required by the shared pool).

The fp32 graph path replays the kernels of an eager call on the same inputs: its outputs equal the eager ones. The
capture function is injectable (`capture=`), so the cache logic is tested on the CPU with a stand-in.
"""

import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

GraphKey = tuple  # (shape, stride, dtype, device) of an input


@dataclass
class CapturedGraph:
    """One captured call: `replay()` reruns it on whatever `static_input` holds and writes `static_output`."""

    replay: Callable[[], None]
    static_input: torch.Tensor
    static_output: torch.Tensor


def capture_cuda_graph(
    function: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor, pool=None, warmup_calls: int = 2
) -> CapturedGraph:
    """Capture `function` on a static copy of `example` (a CUDA tensor) as a `torch.cuda.CUDAGraph`.

    As PyTorch's documentation asks: warm-up calls on a side stream first (cuDNN's algorithm choice, lazy
    initialisation), then the capture itself (`torch.cuda.graph`, with `pool` shared between graphs). The capture's
    error mode is "thread_local": other threads (image decoding, PNG writing) may keep using CUDA meanwhile.
    """
    device = example.device
    with torch.cuda.device(device):
        static_input = torch.empty_strided(example.shape, example.stride(), dtype=example.dtype, device=device)
        static_input.copy_(example)
        side_stream = torch.cuda.Stream(device)
        side_stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side_stream):
            for _ in range(warmup_calls):
                function(static_input)
        torch.cuda.current_stream(device).wait_stream(side_stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            static_output = function(static_input)
    return CapturedGraph(graph.replay, static_input, static_output)


@dataclass
class GraphCacheStats:
    """What a [`CUDAGraphRunner`] did: calls run eagerly (and why), graphs captured, replayed, dropped, failed."""

    eager_first_sight: int = 0
    eager_too_large: int = 0
    eager_capture_failed: int = 0
    captures: int = 0
    replays: int = 0
    evictions: int = 0
    failed_shapes: list = field(default_factory=list)


class CUDAGraphRunner:
    """`function(input)` for tensors, replaying a captured graph for input shapes seen before (see the module doc).

    Args:
        function: a pure function of one tensor (the model call, with its autocast) returning one tensor.
        max_graphs: how many captured shapes are kept (least recently used dropped first).
        max_elements: inputs with more than this many elements per channel (batch x height x width) run eagerly.
        min_calls: calls with a shape before it is captured (2: a shape seen once runs eagerly).
        capture: `(function, example) -> CapturedGraph`; default [`capture_cuda_graph`] with a shared memory pool.
    """

    def __init__(
        self,
        function: Callable[[torch.Tensor], torch.Tensor],
        *,
        max_graphs: int = 8,
        max_elements: int | None = 2**24,
        min_calls: int = 2,
        capture: Callable[[Callable, torch.Tensor], CapturedGraph] | None = None,
    ):
        if not isinstance(max_graphs, int) or max_graphs < 1:
            raise ValueError(f"max_graphs must be a positive int; got {max_graphs!r}.")
        if max_elements is not None and (not isinstance(max_elements, int) or max_elements < 1):
            raise ValueError(f"max_elements must be a positive int or None; got {max_elements!r}.")
        if not isinstance(min_calls, int) or min_calls < 1:
            raise ValueError(f"min_calls must be a positive int; got {min_calls!r}.")
        self.function = function
        self.max_graphs, self.max_elements, self.min_calls = max_graphs, max_elements, min_calls
        self._capture = capture or self._capture_in_shared_pool
        self._pool = None
        self._graphs: OrderedDict[GraphKey, CapturedGraph] = OrderedDict()
        self._calls: OrderedDict[GraphKey, int] = OrderedDict()  # shapes not captured yet -> calls so far (bounded)
        self._eager_only: set[GraphKey] = set()
        self._last_replay = None  # a CUDA event: the next replay waits for it (shared pool)
        self._lock = threading.RLock()
        self.stats = GraphCacheStats()

    @staticmethod
    def key(tensor: torch.Tensor) -> GraphKey:
        return (tuple(tensor.shape), tensor.stride(), tensor.dtype, tensor.device)

    @property
    def captured_keys(self) -> list[GraphKey]:
        """The keys of the cached graphs, least recently used first."""
        return list(self._graphs)

    def clear(self) -> None:
        """Drop every graph (their memory returns to the pool) and forget the shapes seen."""
        with self._lock:
            self._graphs.clear()
            self._calls.clear()
            self._eager_only.clear()

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        key = self.key(tensor)
        with self._lock:
            graph = self._graphs.get(key)
            if graph is not None:
                self._graphs.move_to_end(key)
                return self._replay(graph, tensor)
            if key in self._eager_only:
                self.stats.eager_capture_failed += 1
                return self.function(tensor)
            if self.max_elements is not None and tensor.numel() // max(tensor.shape[1], 1) > self.max_elements:
                self.stats.eager_too_large += 1
                return self.function(tensor)
            calls = self._calls.pop(key, 0) + 1
            if calls < self.min_calls:
                self._calls[key] = calls
                while len(self._calls) > 4 * self.max_graphs:  # remember a bounded number of one-off shapes
                    self._calls.popitem(last=False)
                self.stats.eager_first_sight += 1
                return self.function(tensor)
            graph = self._try_capture(key, tensor)
            if graph is None:
                return self.function(tensor)
            return self._replay(graph, tensor)

    def _try_capture(self, key: GraphKey, tensor: torch.Tensor) -> CapturedGraph | None:
        while len(self._graphs) >= self.max_graphs:
            self._graphs.popitem(last=False)
            self.stats.evictions += 1
        try:
            graph = self._capture(self.function, tensor)
        except (torch.OutOfMemoryError, RuntimeError) as error:
            self._eager_only.add(key)
            self.stats.failed_shapes.append(key[0])
            self.stats.eager_capture_failed += 1
            if tensor.is_cuda:
                torch.cuda.empty_cache()
            warnings.warn(
                f"Could not capture a CUDA graph for inputs of shape {tuple(tensor.shape)} ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}); that shape runs eagerly from now on.",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        self._graphs[key] = graph
        self.stats.captures += 1
        return graph

    def _replay(self, graph: CapturedGraph, tensor: torch.Tensor) -> torch.Tensor:
        graph.static_input.copy_(tensor)
        if tensor.is_cuda:
            stream = torch.cuda.current_stream(tensor.device)
            if self._last_replay is not None:
                stream.wait_event(self._last_replay)
            graph.replay()
            output = graph.static_output.clone()
            self._last_replay = torch.cuda.Event()
            self._last_replay.record(stream)
        else:  # a stand-in capture (tests)
            graph.replay()
            output = graph.static_output.clone()
        self.stats.replays += 1
        return output

    def _capture_in_shared_pool(self, function, example: torch.Tensor) -> CapturedGraph:
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        return capture_cuda_graph(function, example, pool=self._pool)


__all__ = ["CUDAGraphRunner", "CapturedGraph", "GraphCacheStats", "capture_cuda_graph"]
