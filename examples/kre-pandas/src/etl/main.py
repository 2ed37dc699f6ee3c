"""etl: the readings as a pandas DataFrame; drops unnamed sensors and repeated readings."""

import pandas as pd
from public_input_pb2 import Reading, Readings, Request


async def init(ctx):
    ctx.logger.info(f"etl: pandas {pd.__version__}")


async def handler(ctx, data):
    req = Request()
    data.Unpack(req)
    frame = pd.DataFrame(
        {"sensor": [r.sensor.strip() for r in req.readings],
         "value": [r.value for r in req.readings]},
        columns=["sensor", "value"],
    )
    kept = frame[frame["sensor"] != ""].drop_duplicates()
    if kept.empty:
        raise ValueError("no readings with a sensor name")
    return Readings(
        readings=[Reading(sensor=s, value=float(v)) for s, v in kept.itertuples(index=False)],
        dropped=len(frame) - len(kept),
    )
