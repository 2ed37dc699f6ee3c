"""output: format the greeting into the rpc's Response."""

from public_input_pb2 import Greeting, Response


async def handler(ctx, data):
    greeting = Greeting()
    data.Unpack(greeting)
    ctx.logger.info(f"rule {greeting.rule} for {greeting.name}")
    return Response(greeting=f"{greeting.salutation}, {greeting.name}!")
