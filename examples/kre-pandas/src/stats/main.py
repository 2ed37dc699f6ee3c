"""stats: the mean of all readings and of each sensor's, computed with pandas."""

import pandas as pd
from public_input_pb2 import Readings, Response, SensorMean


async def handler(ctx, data):
    readings = Readings()
    data.Unpack(readings)
    frame = pd.DataFrame({"sensor": [r.sensor for r in readings.readings],
                          "value": [r.value for r in readings.readings]})
    grouped = frame.groupby("sensor", sort=True)["value"].agg(["mean", "count"])
    return Response(
        mean=float(frame["value"].mean()),
        count=len(frame),
        dropped=readings.dropped,
        by_sensor=[SensorMean(sensor=str(name), mean=float(row["mean"]), count=int(row["count"]))
                   for name, row in grouped.iterrows()],
    )
