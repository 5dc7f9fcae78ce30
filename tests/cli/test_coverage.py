"""How much of xe's command table pyxapi's xe implements (printed; the floor only goes up),
and the declared one-call commands checked against the model."""

from __future__ import annotations

import pytest

from pyxapi.cli import table
from pyxapi.cli.commands import registry
from pyxapi.model.schema import load_model

# Raise these when commands are added; never lower them.
EXPLICIT_FLOOR = 387
GENERATED_FLOOR = 291


def explicit_names() -> list[str]:
    return [n for n in table.command_names() if (spec := table.command(n)) is not None and not spec.generated]


def generated_names() -> list[str]:
    return [n for n in table.command_names() if (spec := table.command(n)) is not None and spec.generated]


def test_coverage_report() -> None:
    counts = table.counts()
    explicit = explicit_names()
    implemented = [n for n in explicit if n in registry()]
    generated = generated_names()  # all served by cli/generated.py from the field table
    missing = sorted(set(explicit) - set(implemented))
    print(
        f"\nxe commands: explicit {len(implemented)}/{counts['explicit']} implemented, "
        f"generated {len(generated)}/{counts['generated']} implemented"
    )
    print("not yet: " + ", ".join(missing))
    assert len(explicit) == counts["explicit"] == 387
    assert len(generated) == counts["generated"] == 291
    assert len(implemented) >= EXPLICIT_FLOOR
    assert len(generated) >= GENERATED_FLOOR


def test_registry_holds_only_commands_of_the_table() -> None:
    assert set(registry()) <= set(explicit_names())


@pytest.mark.parametrize("name", sorted(registry()))
def test_every_command_has_help_text(name: str) -> None:
    doc = registry()[name].__doc__
    assert doc and len(doc.split()) >= 3, f"{name} has no help text"


def test_declared_calls_exist_in_the_model_with_that_many_arguments() -> None:
    model = load_model()
    checked = 0
    for name, handler in registry().items():
        method = getattr(handler, "api_method", None)
        if method is None:
            continue
        cls, _, message = method.partition(".")
        assert cls in model.classes, f"{name}: no class {cls}"
        assert message in model.classes[cls].messages, f"{name}: no message {method}"
        m = model.classes[cls].messages[message]
        arity = handler.api_arity  # type: ignore[attr-defined]
        assert m.min_params <= arity <= len(m.params), f"{name}: {method} takes {len(m.params)}, given {arity}"
        checked += 1
    assert checked >= 150


def test_cli_tables_are_generated_from_the_current_model_and_reference() -> None:
    """Regenerate the tables in memory: a model change without `python3 scripts/gen_cli_table.py` fails here."""
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    if not (root.parent / "shared" / "xenapi" / "xe-commands.json").exists():
        # as tests/model does: CI and developers have shared/ beside the checkout, a bare clone not
        pytest.skip("the xe command reference is not beside this checkout")
    spec = importlib.util.spec_from_file_location("gen_cli_table", root / "scripts" / "gen_cli_table.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    reference = gen.load(root.parent / "shared" / "xenapi" / "xe-commands.json")
    idx = gen.ModelIndex(gen.load(gen.MODEL))
    data = root / "src" / "pyxapi" / "cli" / "data"
    assert json.loads((data / "commands.json").read_text()) == gen.command_index(reference["commands"])
    for g in reference["generated_classes"]:
        assert json.loads((data / "classes" / f"{g['cli_class']}.json").read_text()) == gen.class_spec(g, idx), g
