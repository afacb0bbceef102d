"""Write the contract's JSON Schema files to schemas/json/ and its AsyncAPI document to
schemas/asyncapi.yaml (`python -m schemas.export [--check]`)."""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from schemas.asyncapi import asyncapi_drifted, write_asyncapi
from schemas.events import EVENT_CLASSES, CaseEvent
from schemas.referral import KafkaReferralSubmission, ReferralSubmission, RejectedSubmission

JSON_DIR = Path(__file__).parent / "json"
_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _render(schema: dict[str, Any]) -> str:
    return json.dumps({"$schema": _DIALECT, **schema}, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_all() -> dict[str, str]:
    """Return every exported schema file as filename -> text."""
    # Submissions are what we accept (validation view); events and rejections are what we
    # publish, so consumers get the serialization view, where defaulted fields are always present.
    union = TypeAdapter(CaseEvent).json_schema(mode="serialization")
    files = {
        "referral_submission.json": _render(ReferralSubmission.model_json_schema()),
        "kafka_referral_submission.json": _render(KafkaReferralSubmission.model_json_schema()),
        "rejected_submission.json": _render(RejectedSubmission.model_json_schema(mode="serialization")),
        "case_event.json": _render({"title": "CaseEvent", **union}),
    }
    for name, event_class in EVENT_CLASSES.items():
        files[f"case.{name}.v1.json"] = _render(event_class.model_json_schema(mode="serialization"))
    return files


def drifted_files(directory: Path = JSON_DIR) -> list[str]:
    """Return the files in `directory` that are missing, stale or no longer exported."""
    expected = render_all()
    present = {path.name for path in directory.glob("*.json")} if directory.is_dir() else set()
    drifted = {
        name
        for name, text in expected.items()
        if name not in present or (directory / name).read_text(encoding="utf-8") != text
    }
    return sorted(drifted | (present - expected.keys()))


def write_all(directory: Path = JSON_DIR) -> list[str]:
    """Write every schema file into `directory`, remove ones no longer exported; return changed names."""
    changed = drifted_files(directory)
    directory.mkdir(parents=True, exist_ok=True)
    expected = render_all()
    for name in changed:
        path = directory / name
        if name in expected:
            path.write_text(expected[name], encoding="utf-8")
        else:
            path.unlink()
    return changed


def main(argv: list[str] | None = None) -> int:
    """Run the exporter; with --check, report drift and exit 1 instead of writing."""
    parser = argparse.ArgumentParser(prog="python -m schemas.export", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if schemas/json/ or schemas/asyncapi.yaml is out of date"
    )
    args = parser.parse_args(argv)
    if args.check:
        drifted = [f"schemas/json/{name}" for name in drifted_files()]
        if asyncapi_drifted():
            drifted.append("schemas/asyncapi.yaml")
        for name in drifted:
            print(f"drifted: {name}", file=sys.stderr)
        if drifted:
            print("run `python -m schemas.export` to regenerate", file=sys.stderr)
        return 1 if drifted else 0
    for name in write_all():
        print(f"wrote schemas/json/{name}")
    if write_asyncapi():
        print("wrote schemas/asyncapi.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
