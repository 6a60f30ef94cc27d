"""Every public name (``coreset_curate.__all__``) documents its parameters, what it returns
and what it raises, in the Google style the API reference renders (mkdocstrings)."""

import inspect
import re

import pytest

import coreset_curate

PUBLIC = [name for name in coreset_curate.__all__
          if inspect.isclass(getattr(coreset_curate, name))
          or inspect.isfunction(getattr(coreset_curate, name))]


def _parameters(obj) -> list[str]:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [p.name for p in sig.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _own_source(obj) -> str:
    """The code that runs when ``obj`` is called: a function's body, a class's
    ``__init__`` / ``__post_init__`` (a dataclass checks its fields there)."""
    if inspect.isfunction(obj):
        return inspect.getsource(inspect.unwrap(obj))
    parts = []
    for name in ("__init__", "__post_init__"):
        fn = obj.__dict__.get(name)
        if inspect.isfunction(fn):
            try:
                parts.append(inspect.getsource(fn))
            except OSError:  # a dataclass's generated __init__: it raises nothing itself
                pass
    return "\n".join(parts)


def test_the_public_list_is_not_empty():
    assert len(PUBLIC) >= 30


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_documents_parameters_returns_and_raises(name):
    obj = getattr(coreset_curate, name)
    doc = inspect.getdoc(obj) or ""
    assert doc, f"{name} has no docstring"
    params = _parameters(obj)
    if params:
        assert "Args:" in doc or "Attributes:" in doc, f"{name}: no Args/Attributes section"
        section = doc.split("Args:" if "Args:" in doc else "Attributes:", 1)[1]
        undocumented = [p for p in params
                        if not re.search(rf"^\s+\**{re.escape(p)}\b.*:", section, re.M)]
        assert not undocumented, f"{name}: parameters without an entry: {undocumented}"
    if inspect.isfunction(obj):
        assert "Returns:" in doc or "Yields:" in doc, f"{name}: no Returns section"
    if re.search(r"^\s+raise \w", _own_source(obj), re.M):
        assert "Raises:" in doc, f"{name} raises but its docstring has no Raises section"


def test_the_api_reference_renders_every_public_name():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "reference" / "api.md").read_text()
    rendered = {line.split()[1].rsplit(".", 1)[1] for line in page.splitlines()
                if line.startswith("::: ")}
    assert rendered == set(coreset_curate.__all__) - {"__version__"}
