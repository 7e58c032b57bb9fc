"""The measurements: every figure of the benchmark and its ratio to a baseline of the same run.

Method: every measured party gets the same packets (`bench.traffic`). Workloads that are
compared with each other (for one frame size and algorithm: bare AEAD, agent, scapy and the
simulated path; the SAD at two sizes; the config plane two ways) are timed in rounds: in each
round every workload runs once, in turn, its set-up untimed and `time.perf_counter` around
the run. The first round warms up and is not counted; a figure is the best of the other
rounds, the run the rest of the machine disturbed least. Rates are operations per second;
Gbit/s count the bytes of the clear frames.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import version

from ipsec_offload.agent.fastpath import FAST_PATH_BUILT
from ipsec_offload.bench import live, workloads
from ipsec_offload.bench.traffic import SPI, BenchError, agent_with_sa, packet
from ipsec_offload.bench.workloads import Prepare
from ipsec_offload.host.fastpath import RX_PATH_BUILT
from ipsec_offload.nic.fastpath import NIC_PATH_BUILT
from ipsec_offload.wire import frames, ip
from ipsec_offload.wire.config import Algorithm, Direction

SA_MEMORY_BUDGET = 1536
"""Bytes an idle installed SA may take (the issue's target: 1.5 KiB)."""
PACKETS = "packets/s"


@dataclass(frozen=True, slots=True)
class Settings:
    """How much to measure. `FULL` is `ipsec-offload bench`; `QUICK` only shows that it runs."""

    sizes: tuple[int, ...] = (64, 512, 1400, 9000)
    algorithms: tuple[Algorithm, ...] = (Algorithm.AES_GCM_128, Algorithm.AES_GCM_256)
    batch: int = 256
    """Frames per call to the agent (from_host, from_wire) and sends per burst of the host."""
    packets: int = 4096
    """Packets per timed run of the agent and the bare AEAD."""
    peer_packets: int = 256
    """Packets per timed run of scapy."""
    path_packets: int = 4096
    """Packets per timed run of the whole simulated path."""
    rounds: int = 9
    """Timed rounds, after one warm-up round; a figure is the best of them."""
    sad_sizes: tuple[int, int] = (1_000, 1_000_000)
    lookups: int = 200_000
    """SAD lookups per timed run."""
    config_round_trips: int = 1000
    memory_sas: int = 2000
    """SAs installed to measure the memory of one."""
    golden_frames: tuple[int, int] = (10_000, 1_000_000)
    """The golden model's mixed traces (a tenth config frames): the large one is timed once
    (it takes seconds), in turn with `golden_repeats` runs of the small one in a row."""
    golden_repeats: int = 50
    """Runs of the small trace (at least 2; half the large trace's frames, so that both are
    timed over seconds): half of them just before the large one, half just after."""
    live_sizes: tuple[int, ...] = (64, 1400)
    live_packets: int = 65_536
    """Tx offload frames queued for the live agent per run: its rings are sized to hold
    them (2 KiB a frame, in each of its sockets)."""
    live_rounds: int = 7
    """Rounds of the live figures per size, each figure measured once a round: the median
    counts."""


FULL = Settings()
QUICK = Settings(
    batch=4,
    packets=8,
    peer_packets=2,
    path_packets=4,
    rounds=1,
    sad_sizes=(100, 1000),
    lookups=1000,
    config_round_trips=4,
    memory_sas=20,
    golden_frames=(400, 4000),
    golden_repeats=10,
    live_packets=2000,
    live_rounds=1,
)


@dataclass(frozen=True, slots=True)
class Target:
    """What a ratio must reach: at least `bound`, or with `at_most` at most."""

    bound: float
    at_most: bool = False

    def met(self, value: float) -> bool:
        return value <= self.bound if self.at_most else value >= self.bound

    def __str__(self) -> str:
        return f"{'<=' if self.at_most else '>='} {self.bound:g}"


@dataclass(frozen=True, slots=True)
class Ratio:
    """A figure divided by its baseline: a rate by a rate, a cost by a cost."""

    baseline: str
    """The `Figure.id` of the baseline."""
    value: float
    target: Target | None = None

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self.value)


@dataclass(frozen=True, slots=True)
class Figure:
    """One result: an absolute value and its ratios to baselines (none for a baseline)."""

    id: str
    what: str
    value: float
    unit: str
    size: int | None = None
    algorithm: Algorithm | None = None
    ratios: tuple[Ratio, ...] = ()

    @property
    def gbps(self) -> float | None:
        """Gbit/s of clear frames, for a packet rate of frames of `size` bytes."""
        if self.size is None or self.unit != PACKETS:
            return None
        return self.value * self.size * 8 / 1e9


@dataclass(slots=True)
class Results:
    """Every figure of one run, and where and how it ran."""

    machine: dict[str, str]
    settings: Settings
    seconds: float = 0.0
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What was not measured here, and why."""

    def figure(self, figure_id: str) -> Figure:
        for figure in self.figures:
            if figure.id == figure_id:
                return figure
        raise KeyError(figure_id)


def race(
    timed: Mapping[str, Prepare],
    rounds: int,
    warm_up: bool = True,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Operations per second of each workload: the best of `rounds` rounds in which the
    workloads take turns, after a warm-up round (without `warm_up`, for runs long enough to
    warm themselves up), timed by `clock` (wall time; `time.process_time` counts only the
    processor time this process got)."""
    best = dict.fromkeys(timed, 0.0)
    gc.collect()
    gc.freeze()  # the workloads' data (a million SAs, say) is left out of every collection
    try:
        for counted in [False] * warm_up + [True] * rounds:
            for name, prepare in timed.items():
                run = prepare()
                gc.collect()
                start = clock()
                done = run()
                elapsed = clock() - start
                if counted:
                    best[name] = max(best[name], done / elapsed)
    finally:
        gc.unfreeze()
    return best


def machine() -> dict[str, str]:
    """What the run ran on: processors available, CPU model, Python, cryptography, scapy,
    and which compiled fast paths are built."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpus": str(cpus),
        "cpu": model,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cryptography": version("cryptography"),
        "scapy": version("scapy"),
        "fast paths": _fast_paths(),
    }


def _fast_paths() -> str:
    """Which compiled fast paths the package was built with (docs/architecture.md)."""
    built = {
        "agent": FAST_PATH_BUILT,
        "NIC": NIC_PATH_BUILT,
        "host receive": RX_PATH_BUILT,
        "UDP frames": frames.build_udp_frames is not frames.reference_build_udp_frames,
        "checksum": ip.internet_checksum is not ip.reference_internet_checksum,
    }
    compiled = [name for name, yes in built.items() if yes]
    missing = [name for name, yes in built.items() if not yes]
    if not missing:
        return "all compiled (" + ", ".join(compiled) + ")"
    return "not built: " + ", ".join(missing) + " (their reference paths run instead)"


def run_benchmark(
    settings: Settings = FULL, progress: Callable[[str], None] = lambda _: None
) -> Results:
    """Measure every figure (see the module docstring and docs/performance.md)."""
    started = time.perf_counter()
    results = Results(machine(), settings)
    for algorithm in settings.algorithms:
        for size in settings.sizes:
            progress(f"datapath: {size}-byte frames, {_name(algorithm)}")
            results.figures.extend(_datapath(settings, size, algorithm))
    small, large = settings.sad_sizes
    progress(f"SAD lookups: {small} and {large} SAs")
    results.figures.extend(_lookups(settings))
    progress("memory per idle SA")
    results.figures.extend(_sa_memory(settings))
    progress("config plane: ADD_SA round trips")
    results.figures.extend(_config_plane(settings))
    small, large = settings.golden_frames
    progress(f"golden model: mixed traces of {small:,} and {large:,} frames")
    results.figures.extend(_golden(settings))
    why = live.cannot_run()
    if why is None:
        progress("live: the agent on veth, the plain forwarder, the agent in process")
        results.figures.extend(_live(settings))
    else:
        results.notes.append(f"live figures not measured: {why}")
    results.seconds = time.perf_counter() - started
    return results


def _name(algorithm: Algorithm) -> str:
    return f"AES-GCM-{algorithm.key_length * 8}"


def _datapath(settings: Settings, size: int, algorithm: Algorithm) -> list[Figure]:
    # packet 1 only primes each fresh receiver (its cipher context); the others are timed
    packets = [packet(size, seq, algorithm) for seq in range(1, settings.packets + 2)]
    sealed = agent_with_sa(Direction.OUTBOUND, algorithm).from_host([p.offload for p in packets])
    if len(sealed.to_wire) != len(packets):
        raise BenchError("the agent did not encrypt every packet")
    workloads.check_scapy_agrees(algorithm, packets[0], sealed.to_wire[0])
    primer, frames = sealed.to_wire[0], sealed.to_wire[1:]
    timed = packets[1:]
    rates = race(
        {
            "bare_encrypt": workloads.bare_encrypt(algorithm, timed),
            "agent_tx": workloads.agent_tx(algorithm, timed, settings.batch),
            "scapy_encrypt": workloads.scapy_encrypt(algorithm, timed[: settings.peer_packets]),
            "bare_decrypt": workloads.bare_decrypt(algorithm, timed, frames),
            "agent_rx": workloads.agent_rx(algorithm, primer, frames, settings.batch),
            "reference_tx": workloads.agent_tx(algorithm, timed, settings.batch, False),
            "reference_rx": workloads.agent_rx(algorithm, primer, frames, settings.batch, False),
            "scapy_decrypt": workloads.scapy_decrypt(algorithm, frames[: settings.peer_packets]),
            "full_path": workloads.full_path(
                algorithm, size, settings.path_packets, settings.batch
            ),
            "full_path_captured": workloads.full_path(
                algorithm, size, settings.path_packets, settings.batch, capture=True
            ),
        },
        settings.rounds,
    )
    tag = f"{algorithm.name.lower()}/{size}"

    def figure(name: str, what: str, *ratios: tuple[str, Target | None]) -> Figure:
        return Figure(
            f"{name}/{tag}",
            what,
            rates[name],
            PACKETS,
            size,
            algorithm,
            tuple(
                Ratio(f"{base}/{tag}", rates[name] / rates[base], target) for base, target in ratios
            ),
        )

    ceiling = {64: Target(0.3), 1400: Target(0.5)}.get(size)
    peer = Target(100.0)
    return [
        figure("bare_encrypt", "AESGCM.encrypt (ceiling)"),
        figure("bare_decrypt", "AESGCM.decrypt (ceiling)"),
        figure("scapy_encrypt", "scapy encrypt (peer)"),
        figure("scapy_decrypt", "scapy decrypt (peer)"),
        figure("agent_tx", "agent Tx", ("bare_encrypt", ceiling), ("scapy_encrypt", peer)),
        figure("agent_rx", "agent Rx", ("bare_decrypt", ceiling), ("scapy_decrypt", peer)),
        figure("reference_tx", "agent Tx, reference path only", ("bare_encrypt", None)),
        figure("reference_rx", "agent Rx, reference path only", ("bare_decrypt", None)),
        figure(
            "full_path",
            "full simulated path",
            ("bare_encrypt", Target(0.25) if size == 1400 else None),
        ),
        figure(
            "full_path_captured",
            "full simulated path, every link captured",
            ("bare_encrypt", None),
        ),
    ]


def _lookups(settings: Settings) -> list[Figure]:
    """SAD lookups (`_sad_lookups`) of IPv4 keys, the bench's traffic, which the target is set
    on, and of IPv6 keys; a plain dict at the same sizes (one lookup at a time) is the floor
    under a lookup that does not pipeline."""
    small, large = settings.sad_sizes
    floor = _costs(
        {str(n): workloads.dict_lookups(n, settings.lookups) for n in (small, large)},
        settings.rounds,
    )
    return [
        *_sad_lookups(settings, 4),
        *_sad_lookups(settings, 16),
        *_against(
            Figure(
                f"dict_lookup/{small}",
                f"dict lookup (floor), {small:,} keys",
                floor[str(small)],
                "ns",
            ),
            [(f"dict_lookup/{large}", f"dict lookup (floor), {large:,} keys", floor[str(large)])],
        ),
    ]


def _sad_lookups(settings: Settings, dst_len: int) -> list[Figure]:
    """SAD lookups of keys with `dst_len`-byte destinations at two sizes, a burst at a time as
    the engine looks them up, with traffic on every SA of the larger one and on as many as the
    smaller one holds; the 1.3 target is on IPv4 keys."""
    small, large = settings.sad_sizes
    lookups, batch = settings.lookups, settings.batch
    family, what = ("", "") if dst_len == 4 else ("ipv6/", ", IPv6")
    sad_small, keys_small = workloads.populated_sad(small, dst_len)
    sad_large, keys_large = workloads.populated_sad(large, dst_len)
    active = f"{large}/active_{small}"
    sad = _costs(
        {
            str(small): workloads.sad_lookups(sad_small, keys_small, lookups, batch),
            str(large): workloads.sad_lookups(sad_large, keys_large, lookups, batch),
            active: workloads.sad_lookups(sad_large, keys_large[:small], lookups, batch),
        },
        settings.rounds,
    )
    del sad_small, sad_large, keys_small, keys_large
    return _against(
        Figure(
            f"sad_lookup/{family}{small}", f"SAD lookup{what}, {small:,} SAs", sad[str(small)], "ns"
        ),
        [
            (f"sad_lookup/{family}{large}", f"SAD lookup{what}, {large:,} SAs", sad[str(large)]),
            (
                f"sad_lookup/{family}{active}",
                f"SAD lookup{what}, {large:,} SAs, {small:,} in use",
                sad[active],
            ),
        ],
        Target(1.3, at_most=True) if dst_len == 4 else None,
    )


def _against(
    base: Figure, rows: Sequence[tuple[str, str, float]], target: Target | None = None
) -> list[Figure]:
    """`base`, then a figure in ns for each (id, what, value) of `rows` as a ratio to it."""
    return [
        base,
        *(
            Figure(id_, what, value, "ns", ratios=(Ratio(base.id, value / base.value, target),))
            for id_, what, value in rows
        ),
    ]


def _costs(
    timed: Mapping[str, Prepare],
    rounds: int,
    warm_up: bool = True,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Nanoseconds per operation of each workload (see `race`)."""
    return {name: 1e9 / rate for name, rate in race(timed, rounds, warm_up, clock).items()}


def _sa_memory(settings: Settings) -> list[Figure]:
    budget = Figure("sa_memory_budget", "idle SA budget", SA_MEMORY_BUDGET, "bytes")
    figures = [budget]
    for direction in (Direction.OUTBOUND, Direction.INBOUND):
        name = direction.name.lower()
        per_sa = workloads.memory_per_sa(direction, settings.memory_sas)
        ratio = Ratio(budget.id, per_sa / SA_MEMORY_BUDGET, Target(1.0, at_most=True))
        figures.append(
            Figure(f"sa_memory/{name}", f"idle {name} SA", per_sa, "bytes", ratios=(ratio,))
        )
    return figures


def _config_plane(settings: Settings) -> list[Figure]:
    n = settings.config_round_trips
    rates = race(
        {"agent": workloads.config_agent(n), "driver": workloads.config_driver(n)},
        settings.rounds,
    )
    unit = "round trips/s"
    base = Figure("config/agent", "ADD_SA round trip, agent alone", rates["agent"], unit)
    ratio = Ratio(base.id, rates["driver"] / rates["agent"])
    return [
        base,
        Figure(
            "config/pf_driver",
            "ADD_SA round trip, PF driver",
            rates["driver"],
            unit,
            ratios=(ratio,),
        ),
    ]


def _live(settings: Settings) -> list[Figure]:
    """The live agent on veth (`bench.live`) against the same agent in process and against
    the plain forwarder of the same I/O; and with two workers against one, on the frames of
    two SAs (one for each worker, in turn); at each of `live_sizes`, AES-GCM-128.

    Each of `live_rounds` rounds measures all five once, in turn, so that each sees the same
    machine, and each figure is the median of its rounds: a run lasts a fraction of a second,
    over which a shared machine's pace varies by half, and a best-of would favour the one
    process that needs one lucky core over the two workers that need two."""
    algorithm = Algorithm.AES_GCM_128
    figures = []
    with live.veth_namespace() as bed:
        for size in settings.live_sizes:
            packets = [packet(size, seq, algorithm) for seq in range(1, settings.live_packets + 1)]
            spis = (SPI, SPI + 1)
            both = [
                packet(size, n // 2 + 1, algorithm, spis[n % 2])
                for n in range(settings.live_packets)
            ]
            in_process = {"in_process": workloads.agent_tx(algorithm, packets, live.BURST)}
            rate_of = partial(live.live_rate, bed, algorithm=algorithm)
            measures: dict[str, Callable[[], float]] = {
                "in_process": partial(_in_process_rate, in_process),
                "agent": partial(rate_of, packets),
                "forwarder": partial(rate_of, packets, forward_only=True),
                "one": partial(rate_of, both, spis=spis, workers=1),
                "two": partial(rate_of, both, spis=spis, workers=2),
            }
            rounds: dict[str, list[float]] = {name: [] for name in measures}
            for _ in range(settings.live_rounds):
                for name, measure in measures.items():
                    rounds[name].append(measure())
            rate = {name: statistics.median(values) for name, values in rounds.items()}
            tag = f"{algorithm.name.lower()}/{size}"
            figures += [
                Figure(f"live_in_process/{tag}", "agent Tx in process, bursts of 64",
                       rate["in_process"], PACKETS, size, algorithm),
                Figure(f"live_forwarder/{tag}", "plain forwarder on veth (I/O ceiling)",
                       rate["forwarder"], PACKETS, size, algorithm),
                Figure(f"live_agent/{tag}", "live agent Tx on veth", rate["agent"], PACKETS, size,
                       algorithm, (
                           Ratio(f"live_in_process/{tag}", rate["agent"] / rate["in_process"],
                                 Target(0.5)),
                           Ratio(f"live_forwarder/{tag}", rate["agent"] / rate["forwarder"]),
                       )),
                Figure(f"live_one_worker/{tag}", "live agent Tx on veth, 2 SAs, 1 worker",
                       rate["one"], PACKETS, size, algorithm),
                Figure(f"live_two_workers/{tag}", "live agent Tx on veth, 2 SAs, 2 workers",
                       rate["two"], PACKETS, size, algorithm,
                       (Ratio(f"live_one_worker/{tag}", rate["two"] / rate["one"], Target(1.6)),)),
            ]  # fmt: skip
    return figures


def _in_process_rate(timed: Mapping[str, Prepare]) -> float:
    """One timed run of the in-process agent (after its warm-up)."""
    return race(timed, 1)["in_process"]


def _golden(settings: Settings) -> list[Figure]:
    """The golden model (`sim.golden.replay`) on mixed traces (`workloads.golden_trace`):
    `golden_repeats` runs of the small trace in a row straight into the agent alone (its
    floor), then through the golden model, half of them before the one run of the large trace
    and half after, each timed once and without a warm-up round (the first of the small runs
    warms the rest up): its rate against the agent alone's, and its cost per frame on the
    large trace against the small ones', timed around it.

    In processor time (`time.process_time`): the large trace takes tens of seconds, where no
    best-of can pick a moment the rest of the machine left alone, and processor time leaves
    out the time the machine gave other processes, so that the ratios are the model's own and
    not the load of the moment."""
    small, large = settings.golden_frames
    repeats = settings.golden_repeats
    trace = workloads.golden_trace(small)
    big = workloads.golden_trace(large)
    before, after = repeats // 2, repeats - repeats // 2
    rates = race(
        {
            "alone": workloads.golden_agent_alone(trace, repeats),
            "before": workloads.golden_replay(trace, before),
            "large": workloads.golden_replay(big),
            "after": workloads.golden_replay(trace, after),
        },
        1,
        warm_up=False,
        clock=time.process_time,
    )
    del big
    # the small traces' runs half before and half after the large one, as one figure
    seconds = before / rates["before"] + after / rates["after"]
    rates["small"] = repeats / seconds
    unit = "frames/s"
    traces = f"mixed traces of {small:,} frames ({small // 10:,} config), {repeats} in a row"
    large_trace = f"mixed trace of {large:,} frames ({large // 10:,} config)"
    alone = Figure(f"golden/agent_alone/{small}", f"agent alone, {traces}", rates["alone"], unit)
    return [
        alone,
        *(
            Figure(
                f"golden/replay/{frames}",
                f"golden model, {what}",
                rates[name],
                unit,
                ratios=(Ratio(alone.id, rates[name] / rates["alone"]),),
            )
            for name, frames, what in (("small", small, traces), ("large", large, large_trace))
        ),
        *_against(
            Figure(
                f"golden/cost/{small}",
                f"golden model per frame, {traces}",
                1e9 / rates["small"],
                "ns",
            ),
            [
                (
                    f"golden/cost/{large}",
                    f"golden model per frame, {large_trace}",
                    1e9 / rates["large"],
                )
            ],
            Target(1.3, at_most=True),
        ),
    ]
