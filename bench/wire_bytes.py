"""Bytes on the wire per owner per round: the model, a real train message and a real reply.

The reply is built by the product's ClientApp itself (client/app.py ``train_round``:
ArrayRecord + MetricRecord + ConfigRecord) on an owner holding IMDB reviews, with the
default plan (RunConfig(): 4096-d features, DP at epsilon 3, full local batch). Sizes:

  * state_dict bytes: the model's tensors (numel x element size);
  * Flower 1.42 object store: a Message travels as a tree of inflatable objects
    (Message -> RecordDict -> ArrayRecord/MetricRecord/ConfigRecord -> Array); the
    SuperNode/SuperLink push each object's ``deflate()`` bytes, so their sum is what the
    transport carries (before gRPC/TLS framing);
  * ``message_to_proto(...).ByteSize()``, the protobuf of the whole message, for comparison.

    python bench/wire_bytes.py [--records 2000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pandas as pd
from flwr.app import ArrayRecord, Context, Message, RecordDict

from fedshield.client import app as client_module
from fedshield.common import wire
from fedshield.common.config import RunConfig
from fedshield.common.data import builtin_csv_path
from fedshield.common.flower_compat import message_objects, message_proto_bytes, set_task_identity
from fedshield.common.model import build_model

RESULTS = Path(__file__).resolve().parent / "results"


def object_sizes(msg: Message) -> dict:
    """Deflated bytes of every object in the message's tree, by type, and the total."""
    by_type: dict[str, int] = {}
    count: dict[str, int] = {}
    total = 0
    for obj in message_objects(msg).values():
        n = len(obj.deflate())
        name = type(obj).__name__
        by_type[name] = by_type.get(name, 0) + n
        count[name] = count.get(name, 0) + 1
        total += n
    return {"total": total, "by_type": by_type, "objects": count}


def proto_size(msg: Message) -> int | None:
    try:
        return message_proto_bytes(msg)
    except Exception as exc:  # noqa: BLE001 - report, do not fail
        print(f"message_to_proto failed: {type(exc).__name__}: {exc}")
        return None


def main() -> None:
    from bench_machine import provenance

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=2000)
    args = ap.parse_args()
    set_task_identity(task_id=1, run_id=42, node_id=1)
    plan = RunConfig()
    classes = ("0", "1")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frame = pd.read_csv(builtin_csv_path())
        frame = frame[frame["source"] == "imdb"].sample(args.records, random_state=0)
        frame[["text", "label"]].to_csv(tmp / "owner.csv", index=False)
        config = wire.encode_train_plan(plan, classes)
        config[wire.SERVER_ROUND] = 1
        model = build_model(plan.feat_out_dim, len(classes))
        state_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
        content = RecordDict({wire.ARRAYS: ArrayRecord(model.state_dict()), wire.CONFIG: config})
        train_msg = Message(content=content, dst_node_id=1, message_type="train")
        context = Context(
            run_id=42,
            node_id=1,
            node_config={
                "data-path": str(tmp / "owner.csv"),
                "epsilon-budget": 10.0,
                "delta": 1e-5,
                "ledger-dir": str(tmp / "ledgers"),
                "audit-dir": str(tmp / "audit"),
                "owner-id": "owner-a",
            },
            state=RecordDict(),
            run_config={},
        )
        reply = client_module.make_client_app()(train_msg, context)
        assert not reply.has_error(), reply.error
        rows = []
        out = {"state_dict_bytes": state_bytes}
        for name, msg in (
            ("train (server -> owner)", train_msg),
            ("reply (owner -> server)", reply),
        ):
            sizes = object_sizes(msg)
            per_record = {key: len(rec.deflate()) for key, rec in msg.content.items()}
            proto = proto_size(msg)
            out[name] = {"objects": sizes, "records": per_record, "message_to_proto": proto}
            rows.append((name, sizes["total"], proto, per_record))
        keys = dict(reply.content[wire.METRICS])
    print(f"model: Linear({plan.feat_out_dim} -> 2), float32; state_dict {state_bytes:,} bytes\n")
    print(
        "| message | object-store bytes (sum of deflate) | x state_dict | message_to_proto "
        "| record deflate bytes |"
    )
    print("| --- | --- | --- | --- | --- |")
    for name, total, proto, per in rows:
        recs = ", ".join(f"{k} {v:,}" for k, v in per.items())
        print(
            f"| {name} | {total:,} | {total / state_bytes:.3f} | "
            f"{proto if proto is None else format(proto, ',')} | {recs} |"
        )
    print(f"\nper owner per round, both ways: {rows[0][1] + rows[1][1]:,} bytes")
    print(f"reply metrics keys: {sorted(keys)}")
    result = {
        **provenance(),
        "plan": plan.as_dict(),
        **out,
    }
    path = RESULTS / "wire_bytes.json"
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
