"""`simulator` source: sensor-like records for demos, tests and benchmarks."""

from __future__ import annotations

import asyncio
import random
import time

from edgeflow import Config, Message, Source, field

__all__ = ["Simulator"]


class SimulatorConfig(Config):
    count: int | None = field(None, ge=0, doc="stop after this many records; endless when absent")
    rate: float = field(10.0, ge=0, doc="records per second; 0 = as fast as possible")
    seed: int | None = field(None, doc="random seed: the same seed gives the same values")
    devices: int = field(4, ge=1, doc="how many simulated devices (dev-0, dev-1, ...)")
    batch: int = field(1024, ge=1, le=65536, doc="the most records emitted at once")


class Simulator(Source):
    """Sensor-like records: device, temp, hum, seq (0, 1, 2, ...), ts; paced or as fast as possible."""

    Config = SimulatorConfig
    config: SimulatorConfig

    async def on_start(self) -> None:
        self._rng = random.Random(self.config.seed)
        self._names = [f"dev-{i}" for i in range(self.config.devices)]
        self._seq = 0
        self._t0 = time.monotonic()

    async def produce(self) -> list[Message] | None:
        cfg = self.config
        n = cfg.batch
        if cfg.count is not None:
            n = min(n, cfg.count - self._seq)
            if n <= 0:
                return None
        if cfg.rate > 0:
            due = int((time.monotonic() - self._t0) * cfg.rate) + 1 - self._seq
            if due <= 0:
                # Sleep until the next record is due; pacing from t0 keeps the long-run rate exact.
                await asyncio.sleep((self._seq / cfg.rate) - (time.monotonic() - self._t0))
                due = 1
            n = min(n, due)
        return self._make(n)

    def _make(self, n: int) -> list[Message]:
        rng = self._rng
        gauss = rng.gauss
        uniform = rng.uniform
        names = self._names
        ndev = len(names)
        name = self.name
        ts = time.time()
        seq = self._seq
        out = [
            Message(
                {
                    "device": names[i % ndev],
                    "temp": round(gauss(25.0, 6.0), 2),
                    "hum": round(uniform(30.0, 70.0), 1),
                    "seq": i,
                    "ts": ts,
                },
                name,
                None,
                ts,
            )
            for i in range(seq, seq + n)
        ]
        self._seq = seq + n
        return out

    def status(self) -> dict[str, object]:
        return {"seq": getattr(self, "_seq", 0)}
