"""construct is imported only when a payload needs the reference codec (protocol/reference.py).

It costs the daemon and every client ~3 MiB (it pulls in pdb, inspect...) for code that a
healthy session never runs: valid payloads go through the generated struct code. The
check runs in a fresh interpreter, since this one has long imported construct.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from wire_helpers import sample_for

from protocol import payloads as p
from protocol.fields import codec_for

HERE = Path(__file__).resolve().parent

_PROBE = f"""
import dataclasses, json, sys
sys.path.insert(0, {str(HERE)!r})
import client, protocol, qemud.daemon
from protocol import payloads as p
from protocol.fields import Payload, codec_for
from wire_helpers import sample_for, wire_equal

result = {{"round_trips": [], "errors": []}}
classes = sorted({{obj for obj in vars(p).values() if isinstance(obj, type)
                  and dataclasses.is_dataclass(obj) and issubclass(obj, Payload)}},
                 key=lambda c: c.__name__)
for cls in classes:
    value = sample_for(cls)
    codec = codec_for(cls)
    if not wire_equal(codec.decode(codec.encode(value)), value):
        raise AssertionError(cls)
    result["round_trips"].append(cls.__name__)
result["construct_after_round_trips"] = "construct" in sys.modules

truncated = codec_for(p.DomainRef).encode(sample_for(p.DomainRef))[:-1]
try:
    codec_for(p.DomainRef).decode(truncated)
except ValueError as exc:
    result["errors"].append(str(exc))
result["construct_after_error"] = "construct" in sys.modules
print(json.dumps(result))
"""


def _probe() -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         check=True, timeout=120)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_valid_payloads_need_no_construct_and_a_malformed_one_falls_back_to_it() -> None:
    result = _probe()
    assert len(result["round_trips"]) >= 50
    assert {"ListDomainsReply", "StatsReply", "HelloArgs", "Empty"} <= set(
        result["round_trips"])
    assert result["construct_after_round_trips"] is False, (
        "importing the daemon or the client, or encoding or decoding a valid payload, "
        "imported construct")
    # The fallback really ran: the payload's name and construct's wording, as in a
    # process that has long had construct loaded (this one).
    truncated = codec_for(p.DomainRef).encode(sample_for(p.DomainRef))[:-1]
    with pytest.raises(ValueError, match="^DomainRef: ") as here:
        codec_for(p.DomainRef).decode(truncated)
    assert result["errors"] == [str(here.value)]
    assert result["construct_after_error"] is True
