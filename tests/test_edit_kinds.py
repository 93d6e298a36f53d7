"""The edit classifier against the grammar: every single grammar edit of every zoo file gets its own kind."""
import pytest

from cem_nas import mutations, zoo
from cem_nas.corpus import applicable_choices
from cem_nas.edit_kinds import KINDS, edit_kinds


@pytest.mark.parametrize("name", zoo.names())
def test_each_single_grammar_edit_is_classified_as_its_coordinate(name):
    source = zoo.source(name)
    for j, choices in applicable_choices(source).items():
        coordinate = mutations.GRAMMAR[j]
        for i in choices:
            assert edit_kinds(source, mutations.render(source, {coordinate.name: i})) == (coordinate.name,), \
                (coordinate.name, coordinate.choices[i])


def test_same_code_has_no_kind_and_unparsable_code_is_other():
    code = zoo.source("mlp")
    assert edit_kinds(code, code) == ()
    assert edit_kinds(code, code + "\ndef broken(:\n") == ("other",)


def test_a_forward_rewrite_without_new_layers_is_other():
    code = zoo.source("mlp")
    changed = code.replace("return self.classifier(self.features(x))", "return self.classifier(self.features(x) * 2)")
    assert changed != code and edit_kinds(code, changed) == ("other",)


def test_kinds_are_the_grammar_coordinates_plus_other():
    assert [k for k in KINDS if k != "other"] == [c.name for c in mutations.GRAMMAR if not c.neutral]
