"""etl: validate and normalise the name (trim, collapse spaces, capitalise each word)."""

from public_input_pb2 import NormalizedName, Request

MAX_LENGTH = 64


async def init(ctx):
    ctx.set("max_length", MAX_LENGTH)
    ctx.logger.info(f"etl: names up to {MAX_LENGTH} characters")


async def handler(ctx, data):
    req = Request()
    data.Unpack(req)
    words = req.name.split()
    if not words:
        raise ValueError("name is empty")
    name = " ".join(w[:1].upper() + w[1:].lower() for w in words)
    if len(name) > ctx.get("max_length"):
        raise ValueError(f"name is longer than {ctx.get('max_length')} characters")
    ctx.logger.info(f"normalised {req.name!r} to {name!r}")
    return NormalizedName(name=name, original=req.name)
