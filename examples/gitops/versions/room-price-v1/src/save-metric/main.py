"""save-metric: record a prediction against the true price (prediction, measurement, db)."""

from public_input_pb2 import MetricRequest, MetricResponse

COLLECTION = "price_errors"


async def handler(ctx, data):
    req = MetricRequest()
    data.Unpack(req)
    group = req.neighbourhood_group or "unknown"
    if req.true_price <= 0:
        await ctx.prediction.save(error=ctx.prediction.ERR_MISSING_VALUES)
    else:
        await ctx.prediction.save(
            predicted_value=f"{req.predicted_price:.2f}", true_value=f"{req.true_price:.2f}"
        )
        error = abs(req.predicted_price - req.true_price)
        ctx.measurement.save("price_error", {"abs_error": error}, {"neighbourhood_group": group})
        await ctx.db.save(COLLECTION, {"neighbourhood_group": group, "abs_error": error})
    docs = await ctx.db.find(COLLECTION, {"neighbourhood_group": group})
    errors = [d["abs_error"] for d in docs]
    mean = sum(errors) / len(errors) if errors else 0.0
    return MetricResponse(count=len(errors), mean_abs_error=round(mean, 2))
