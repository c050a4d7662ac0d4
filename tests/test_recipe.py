import pytest

from curate.recipe import load_recipe, parse_recipe
from curate.contract import RecipeError
from curate.steps.subset import check_select, referenced_columns


def test_demo_recipe_loads_with_paper_defaults():
    recipe = load_recipe("jobs/recipes/demo.yaml")
    names = [name for name, _ in recipe.stages]
    assert names[:3] == ["basic", "laion2b", "align"] and "metaclip" in names
    basic = dict(recipe.stages)["basic"]
    assert basic.min_side == 200 and basic.max_aspect == 3.0
    assert dict(recipe.stages)["laion2b"].score_column is None


def test_overrides_are_yaml_scalars_and_reach_the_config():
    recipe = load_recipe("jobs/recipes/demo.yaml", ["basic.min_side=300", "align.max_images_per_text=5",
                                                    "select=basic_keep", "seed=7"])
    stages = dict(recipe.stages)
    assert stages["basic"].min_side == 300
    assert stages["align"].max_images_per_text == 5
    assert recipe.select == "basic_keep" and recipe.seed == 7


@pytest.mark.parametrize("mapping, message", [
    ({"stages": {"basic": {}}, "select": "true", "sleect": 1}, r"unknown key\(s\) \['sleect'\]"),
    ({"stages": {"basci": {}}, "select": "true"}, "unknown stage 'basci'"),
    ({"stages": {"basic": {"min_sid": 3}}, "select": "true"}, r"stages.basic: unknown key\(s\) \['min_sid'\]"),
    ({"stages": {"basic": {"min_side": "big"}}, "select": "true"}, "stages.basic.min_side: expected"),
    ({"stages": {"basic": {}}}, "'select'"),
])
def test_bad_recipes_are_clear_errors(mapping, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe(mapping, "t")


def test_override_of_a_stage_not_in_the_recipe_is_an_error():
    with pytest.raises(RecipeError, match="stage 'metaclip' is not in"):
        parse_recipe({"stages": {"basic": {}}, "select": "true"}, "t", ["metaclip.t=5"])


def test_select_columns_are_checked():
    assert referenced_columns("status = 'success' AND basic_keep AND NOT align_keep") == ["align_keep", "basic_keep", "status"]
    with pytest.raises(RecipeError, match=r"unknown column\(s\) \['bsic_keep'\]"):
        check_select("bsic_keep AND status = 'success'", ["basic_keep", "status"])
    with pytest.raises(RecipeError, match="not a valid SQL expression"):
        referenced_columns("basic_keep AND (")
