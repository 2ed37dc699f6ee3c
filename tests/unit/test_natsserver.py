import asyncio

import nats

from runner.natsserver import NatsServer


def test_embedded_server_serves_jetstream_and_restarts(tmp_path):
    async def roundtrip(url: str) -> int:
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.add_stream(name="T", subjects=["t.>"])
        ack = await js.publish("t.x", b"hi")
        await nc.close()
        return ack.seq

    with NatsServer(store_dir=tmp_path / "n") as server:
        assert asyncio.run(roundtrip(server.url)) == 1
        server.restart()
        # file storage survives a restart: the next message is the second in the stream
        assert asyncio.run(roundtrip(server.url)) == 2
