from schemas.export import JSON_DIR, drifted_files, render_all


def test_committed_json_schemas_match_the_models() -> None:
    drifted = drifted_files()
    assert not drifted, (
        f"schemas/json/ is out of date for {drifted}; run `python -m schemas.export` and commit the result"
    )


def test_committed_json_schemas_are_exactly_the_rendered_set() -> None:
    committed = {path.name: path.read_text(encoding="utf-8") for path in JSON_DIR.glob("*.json")}
    assert committed == render_all(), "run `python -m schemas.export` and commit schemas/json/"
