"""inference: choose a salutation for the name from the rule table in rules.json."""

import json

from public_input_pb2 import Greeting, NormalizedName


def init(ctx):
    with open(ctx.path("src/inference/rules.json"), encoding="utf-8") as f:
        table = json.load(f)
    ctx.set("rules", table["rules"])
    ctx.set("default", table["default"])
    ctx.logger.info(f"loaded {len(table['rules'])} greeting rules")


async def handler(ctx, data):
    name = NormalizedName()
    data.Unpack(name)
    rule = next(
        (r for r in ctx.get("rules") if len(name.name) <= r["max_length"]),
        ctx.get("default"),
    )
    return Greeting(salutation=rule["salutation"], name=name.name, rule=rule["name"])
