"""The refactor guard: train, sample, infill and eval print what they printed before issue 13's refactor
(tests/golden/outputs.json, recorded by tests/golden.py on the nano preset for every process kind)."""

import json
import math

from golden import GOLDEN, produce


def _close(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-5)
    return a == b


def test_outputs_match_the_golden_file(tmp_path):
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    now = produce(tmp_path)
    assert set(now) == set(golden)
    for key, expected in golden.items():
        got = now[key]
        rows = zip(got, expected) if isinstance(expected, list) else [(got, expected)]
        for g, e in rows:
            assert set(g) == set(e), key
            for field in e:
                assert _close(g[field], e[field]), f"{key}: {field} is {g[field]!r}, golden {e[field]!r}"
