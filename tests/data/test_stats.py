import json

from adarec.data.stats import describe, format_stats
from tests.data.helpers import prepared


def test_describe_and_format():
    data = prepared([[1, 2, 3], [1, 2, 3, 4, 5], [2, 3, 4, 5, 6, 7, 8]])
    data.filter_log = [
        {"step": "sequences >= 3 items", "rows_before": 16, "rows_after": 15}
        | {"users_before": 4, "users_after": 3, "items_before": 8, "items_after": 8}
    ]
    stats = describe(data)
    assert (stats["users"], stats["items"], stats["interactions"]) == (3, 8, 15)
    assert stats["density"] == 15 / 24
    assert stats["length"]["min"] == 3 and stats["length"]["max"] == 7
    assert stats["length"]["median"] == 5 and stats["length"]["mean"] == 5
    assert stats["length"]["p10"] == 3.4
    json.dumps(stats)
    text = format_stats(stats)
    assert "interactions" in text and "15" in text
    assert "sequences >= 3 items: 16 -> 15  4 -> 3  8 -> 8" in text
