"""model: a linear regression of the nightly price, loaded from model.json in init."""

import json

from public_input_pb2 import Features, Prediction


def init(ctx):
    with open(ctx.path("src/model/model.json"), encoding="utf-8") as f:
        model = json.load(f)
    ctx.set("model", model)
    ctx.logger.info(f"loaded model {model['name']} ({len(model['coefficients'])} coefficients)")


async def handler(ctx, data):
    features = Features()
    data.Unpack(features)
    model = ctx.get("model")
    coefficients = model["coefficients"]
    price = model["intercept"] + sum(
        coefficients.get(name, 0.0) * value for name, value in features.values.items()
    )
    return Prediction(price=price, model=model["name"])
