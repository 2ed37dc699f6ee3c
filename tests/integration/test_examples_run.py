"""The examples answer end to end: real nats-server, real processes, real gRPC."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import subprocess
from pathlib import Path

import pytest
from conftest import EXAMPLES
from google.protobuf import json_format
from local_run import kai, running

from runner.natsserver import NatsServer
from runner.supervisor import free_port

pytestmark = pytest.mark.integration


def test_greeter_answers_through_kai_dev_in_one_command() -> None:
    argv = kai("dev", str(EXAMPLES / "greeter"), "--port", str(free_port()),
               "--web-port", str(free_port()), "--call", "PyGreet", '{"name": "  ada  LOVELACE "}')
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"greeting": "Hello, Ada Lovelace!"}
    assert "ready: grpc 127.0.0.1:" in done.stderr
    assert "(rpcs: PyGreet)" in done.stderr
    # each process's lines carry its name
    assert "greeter-v1-inference" in done.stderr


def test_kre_pandas_nodes_import_pandas_and_answer_under_kai_dev() -> None:
    """A KRE 1.x style version whose nodes import pandas, with its requirements.txt met."""
    readings = [{"sensor": "a", "value": 1}, {"sensor": "a", "value": 2},
                {"sensor": "b", "value": 9}, {"sensor": " ", "value": 5},
                {"sensor": "a", "value": 2}]
    argv = kai("dev", str(EXAMPLES / "kre-pandas"), "--port", str(free_port()),
               "--web-port", str(free_port()), "--call", "SensorStats",
               json.dumps({"readings": readings}))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "mean": 4.0, "count": 3, "dropped": 2,
        "by_sensor": [{"sensor": "a", "mean": 1.5, "count": 2},
                      {"sensor": "b", "mean": 9.0, "count": 1}]}
    assert f"etl: pandas {importlib.metadata.version('pandas')}" in done.stderr


def test_room_price_workflows_answer(nats_server: NatsServer, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(EXAMPLES / "room-price", nats_server.url, tmp_path) as run:
            room = {"neighbourhood_group": "manhattan", "room_type": "Entire home/apt",
                    "minimum_nights": 3, "number_of_reviews": 20, "availability_365": 180}
            price = json_format.MessageToDict(await run.call("PredictPrice", room))
            assert price == {"price": 249.85, "currency": "USD"}

            shared = await run.call("PredictPrice", {**room, "room_type": "Shared room",
                                                     "neighbourhood_group": "Bronx"})
            assert shared.price == pytest.approx(70 - 15 - 30 - 0.75 - 1 + 21.6)

            first = await run.call("SaveMetric", {"neighbourhood_group": "Manhattan",
                                                  "predicted_price": 249.85, "true_price": 225})
            assert (first.count, first.mean_abs_error) == (1, 24.85)
            second = await run.call("SaveMetric", {"neighbourhood_group": "Manhattan",
                                                   "predicted_price": 200, "true_price": 210})
            assert (second.count, second.mean_abs_error) == (2, pytest.approx(17.43, abs=0.011))
            missing = await run.call("SaveMetric", {"neighbourhood_group": "Queens"})
            assert missing.count == 0

    asyncio.run(asyncio.wait_for(scenario(), 90))


def test_kai_call_prints_the_reply_and_maps_errors_to_exit_codes(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    version = EXAMPLES / "room-price"

    def kai_call(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(kai("call", str(version), *args), capture_output=True, text=True,
                              timeout=60)

    async def scenario() -> None:
        async with running(version, nats_server.url, tmp_path) as run:
            address = ("--address", run.address)
            ok = await asyncio.to_thread(
                kai_call, "PredictPrice", '{"neighbourhoodGroup": "Queens", "roomType": '
                '"Private room", "minimumNights": 1}', *address)
            assert ok.returncode == 0, ok.stderr
            assert json.loads(ok.stdout) == {"price": 69.75, "currency": "USD"}

            bad = await asyncio.to_thread(
                kai_call, "PredictPrice", '{"neighbourhood_group": "Paris"}', *address)
            assert bad.returncode == 2
            assert bad.stderr.startswith("error: INTERNAL: node etl: ")
            assert "neighbourhood_group 'Paris' is not one of" in bad.stderr

            unknown = await asyncio.to_thread(kai_call, "Predict", "{}", *address)
            assert unknown.returncode == 1
            assert unknown.stderr.strip() == (
                'error: unknown rpc "Predict" (available: PredictPrice, SaveMetric)')

    asyncio.run(asyncio.wait_for(scenario(), 90))
    down = subprocess.run(kai("call", str(version), "SaveMetric", "{}", "--address",
                              f"127.0.0.1:{free_port()}", "--timeout", "3"),
                          capture_output=True, text=True, timeout=30)
    assert down.returncode == 2
    assert down.stderr.startswith("error: UNAVAILABLE: ")
