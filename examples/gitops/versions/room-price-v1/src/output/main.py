"""output: round the model's price to cents, never below the minimum price."""

from public_input_pb2 import Prediction, Response

MIN_PRICE = 10.0


async def handler(ctx, data):
    prediction = Prediction()
    data.Unpack(prediction)
    ctx.logger.info(f"{prediction.model} predicted {prediction.price:.4f}")
    return Response(price=round(max(prediction.price, MIN_PRICE), 2), currency="USD")
