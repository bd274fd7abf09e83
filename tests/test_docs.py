"""Generated docs are committed up to date."""

from tetrad import docgen


def test_generated_docs_are_current():
    for name, render in docgen.GENERATED.items():
        committed = (docgen.DOCS / name).read_text()
        assert committed == render(), f"docs/{name} is stale: run `python -m tetrad.docgen`"
