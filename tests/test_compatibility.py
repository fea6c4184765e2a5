"""The fast subset of the compatibility table (benchmarks/compatibility.py): every method on a few
random-init transformers with channels-last maps, token prefixes and head-less backbones must run
right (maps per image, in [0, 1], the model unchanged) or be refused with a fix where it does not apply."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from compatibility import NAMED, run, summary  # noqa: E402

FAST = ["timm-swin", "hf-swin", "hf-dinov2", "tv-vit"]


@pytest.mark.parametrize("name", FAST)
def test_every_method_runs_right_or_is_refused_where_it_does_not_apply(name):
    table = run({name: NAMED[name]}, log=lambda line: None)
    statuses = {method: status for method, (status, _, _) in table[name].items()}
    failing = {m: s for m, s in statuses.items() if s not in ("ok", "n/a", "ok*")}  # ok*: ran where n/a
    assert not failing, failing
    assert summary(table)["ok"] == summary(table)["applicable"]
