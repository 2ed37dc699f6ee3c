"""etl: validate a room and turn it into the model's named features."""

from public_input_pb2 import Features, Request

GROUPS = ("Manhattan", "Brooklyn", "Queens", "Bronx", "Staten Island")
ROOM_TYPES = ("Entire home/apt", "Private room", "Shared room")


def _pick(value, allowed, field):
    for choice in allowed:
        if value.strip().lower() == choice.lower():
            return choice
    raise ValueError(f"{field} {value!r} is not one of: {', '.join(allowed)}")


async def handler(ctx, data):
    room = Request()
    data.Unpack(room)
    group = _pick(room.neighbourhood_group, GROUPS, "neighbourhood_group")
    room_type = _pick(room.room_type, ROOM_TYPES, "room_type")
    numbers = {
        "minimum_nights": room.minimum_nights,
        "number_of_reviews": room.number_of_reviews,
        "availability_365": min(room.availability_365, 365),
    }
    if any(v < 0 for v in numbers.values()):
        raise ValueError("minimum_nights, number_of_reviews and availability_365 must be >= 0")
    features = Features()
    features.values[f"neighbourhood_group={group}"] = 1.0
    features.values[f"room_type={room_type}"] = 1.0
    for name, value in numbers.items():
        features.values[name] = float(value)
    return features
