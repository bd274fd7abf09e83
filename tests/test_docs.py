"""Generated docs are committed up to date."""

from tetrad import docgen


def test_generated_docs_are_current():
    for name, render in docgen.GENERATED.items():
        committed = (docgen.DOCS / name).read_text()
        assert committed == render(), f"docs/{name} is stale: run `python -m tetrad.docgen`"


def test_enforcement_table_names_tests_that_exist_and_every_enforced_hook():
    """docs/enforcement.md: every row of the guarantee table cites the tests
    that prove it, and those tests exist; every hook that compiles to a
    cgroup rule is in the table."""
    import ast
    import re

    from tetrad.enforce.devices import OPEN_CALLS
    from tetrad.enforce.network import NETWORK_CALLS

    text = (docgen.DOCS / "enforcement.md").read_text()
    table = text.split("## What each policy gets", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in table.splitlines() if r.startswith("| ") and not r.startswith("| policy says")]
    assert len(rows) >= 10
    repo = docgen.DOCS.parent
    defined: dict[str, set[str]] = {}
    for row in rows:
        refs = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", row.rsplit("|", 2)[1])
        assert refs, f"row without a test: {row[:80]}"
        for path, name in refs:
            if path not in defined:
                tree = ast.parse((repo / path).read_text())
                defined[path] = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
            assert name in defined[path], f"{path}::{name} cited in docs/enforcement.md does not exist"
    for call in [*NETWORK_CALLS, *OPEN_CALLS]:
        assert f"`{call}`" in table, f"{call} compiles to a cgroup rule but is not in docs/enforcement.md"
