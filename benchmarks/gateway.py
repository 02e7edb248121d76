"""The gateway (HTTP and gRPC) against the Kafka client, in one run on one stack.

    python -m benchmarks.gateway [--rates 25,50] [--seconds 15] [--out benchmarks/results/gateway.json]

On the demo topology (embedded broker, three example models, decoy, one worker,
the gateway):

1. at each fixed rate, end-to-end latency seen by a Kafka client (send to
   receipt of the result), by an HTTP client through the gateway (aiohttp, kept-alive
   connections; call to response) and by Triton's gRPC client (asyncio), and their ratios at
   p50 (target ≤ 1.2), with the gateway's CPU per call from ``/proc``;
2. the highest rate one gateway sustains under Debian's ``wrk`` (a Lua body,
   16 connections), with the gateway's CPU per call.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.cpu import arguments, cpu_ms, say
from policies import EXAMPLE_STACK
from rendezvous.operations.broker import embedded_broker
from rendezvous.operations.stack import RunningStack, StackOptions, running_stack
from rendezvous.operations.stackfile import load_stack
from rendezvous.tools.client import RequestSender, ResultCollector
from rendezvous.tools.data import phishing_rows
from rendezvous.tools.summary import percentiles


def kafka_e2e(stack: RunningStack, rate: float, seconds: float) -> dict[str, float]:
    rows = phishing_rows()
    collector = ResultCollector(stack.kafka, stack.topics, 4).start()
    sender = RequestSender(stack.kafka, stack.topics)
    try:
        sender.send([(f"kwarm-{rate}-{i}", rows[i][0]) for i in range(20)], 50)
        collector.wait_for([f"kwarm-{rate}-{i}" for i in range(20)], 30)
        ids = [f"k-{rate}-{i}" for i in range(int(rate * seconds))]
        sender.send(((rid, rows[i % len(rows)][0]) for i, rid in enumerate(ids)), rate)
        collector.wait_for(ids, 30)
        return percentiles([collector.results[r][0].at_ms - sender.sent_ms[r] for r in ids if r in collector.results])
    finally:
        collector.stop()


async def _paced(rate: float, seconds: float, call: Any) -> list[float]:
    """Await ``call(i)`` for i in 0..rate*seconds-1, each started on schedule (open loop) on one event loop;
    each call's latency in ms. One loop, not a thread per call: the client's own cost stays small, as a
    Kafka client's does (librdkafka), so the ratio measures the gateway."""
    import asyncio

    latencies: list[float] = []

    async def timed(i: int) -> None:
        t0 = time.perf_counter()
        await call(i)
        latencies.append((time.perf_counter() - t0) * 1000)

    for i in range(20):  # warm: connections open
        await timed(-1 - i)
    latencies.clear()
    n, start, tasks = int(rate * seconds), time.perf_counter(), []
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(timed(i)))
    await asyncio.gather(*tasks)
    return latencies


def http_e2e(url: str, policy: str, rate: float, seconds: float) -> dict[str, Any]:
    """aiohttp, kept-alive connections, the plain JSON body."""
    import asyncio

    import aiohttp

    rows, statuses = phishing_rows(), []

    async def run() -> list[float]:
        async with aiohttp.ClientSession(base_url=url, timeout=aiohttp.ClientTimeout(total=10)) as session:
            async def call(i: int) -> None:
                body = json.dumps({"id": f"h-{rate}-{i}", "features": rows[i % len(rows)][0]})
                async with session.post(f"/v2/models/{policy}/infer", data=body,
                                        headers={"Content-Type": "application/json"}) as response:
                    await response.read()
                    statuses.append(response.status)
            return await _paced(rate, seconds, call)

    latencies = asyncio.run(run())
    return {"latency_ms": percentiles(latencies), "ok": statuses[20:].count(200), "calls": len(latencies)}


def grpc_e2e(address: str, policy: str, rate: float, seconds: float) -> dict[str, Any]:
    """Triton's asyncio gRPC client, one FP64 input per feature (raw tensor contents: its default)."""
    import asyncio

    import numpy as np
    import tritonclient.grpc.aio as tc
    from tritonclient.utils import InferenceServerException

    rows, failed = phishing_rows(), []

    def inputs(features: dict[str, Any]) -> list[Any]:
        out = []
        for name, value in features.items():
            tensor = tc.InferInput(name, [1], "FP64")
            tensor.set_data_from_numpy(np.array([float(value)]))
            out.append(tensor)
        return out

    async def run() -> list[float]:
        client = tc.InferenceServerClient(address)

        async def call(i: int) -> None:
            try:
                await client.infer(policy, inputs(rows[i % len(rows)][0]), request_id=f"g-{rate}-{i}")
            except InferenceServerException as exc:
                failed.append(str(exc.status()))
        try:
            return await _paced(rate, seconds, call)
        finally:
            await client.close()

    latencies = asyncio.run(run())
    return {"latency_ms": percentiles(latencies), "ok": len(latencies) - len(failed), "calls": len(latencies)}


WRK_LUA = """wrk.method = "POST"
wrk.body = '{"features": %s}'
wrk.headers["Content-Type"] = "application/json"
"""


def wrk_max(url: str, policy: str, gateway_pid: int, seconds: int = 15) -> dict[str, Any] | None:
    if shutil.which("wrk") is None:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_LUA % json.dumps(phishing_rows()[0][0]))
    before = cpu_ms(gateway_pid)
    done = subprocess.run(["wrk", "-t2", "-c16", f"-d{seconds}s", "--latency", "-s", script.name,
                           f"{url}/v2/models/{policy}/infer"], capture_output=True, text=True, timeout=seconds + 60)
    used = cpu_ms(gateway_pid) - before
    out = done.stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p50 = re.search(r"50%\s+([\d.]+)(ms|s|us)", out)
    p99 = re.search(r"99%\s+([\d.]+)(ms|s|us)", out)

    def ms(m: re.Match[str] | None) -> float | None:
        return None if m is None else float(m.group(1)) * {"ms": 1, "s": 1000, "us": 0.001}[m.group(2)]
    return {"requests": total, "req_per_s": round(total / seconds, 1), "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
            "p50_ms": ms(p50), "p99_ms": ms(p99), "gateway_cpu_ms_per_call": round(used / max(total, 1), 3)}


def main() -> None:
    args = arguments(__doc__ or "", "25,50", 15.0, "benchmarks/results/gateway.json")
    broker = embedded_broker()
    bootstrap = broker.start()
    out: dict[str, Any] = {"rates": []}
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        declared = load_stack(EXAMPLE_STACK)
        options = StackOptions(bootstrap, "benchgw", 4, Path(tmp) / "logs", Path(tmp) / "archive", gateway_port=0)
        with running_stack(options, declared, lambda kind, data: say(data.get("text", ""))) as stack:
            assert stack.gateway_url is not None
            name = declared.policy.name
            pid = stack.runtime.supervisor.get("gateway").pid
            assert pid is not None and stack.grpc_address is not None
            for rate in (float(r) for r in args.rates.split(",")):
                say(f"{rate:g} req/s: Kafka client, then HTTP, then gRPC")
                kafka = kafka_e2e(stack, rate, args.seconds)
                row: dict[str, Any] = {"rate": rate, "kafka_e2e_ms": kafka}
                for transport, run, target in (("http", http_e2e, stack.gateway_url),
                                               ("grpc", grpc_e2e, stack.grpc_address)):
                    before = cpu_ms(pid)
                    got = run(target, name, rate, args.seconds)
                    got["gateway_cpu_ms_per_call"] = round((cpu_ms(pid) - before) / max(got["calls"], 1), 3)
                    row[transport] = got
                    row[f"{transport}_vs_kafka_p50"] = round(got["latency_ms"]["p50"] / kafka["p50"], 2)
                out["rates"].append(row)
            say("wrk: 16 connections for 15 s")
            out["wrk"] = wrk_max(stack.gateway_url, name, pid)
    broker.stop()
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
