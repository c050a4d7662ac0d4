import pyarrow as pa
import pytest

from curate.errors import RecipeError
from curate.recipe import load_recipe, parse_recipe
from curate.selection import parse_select
from curate.steps.subset import check_select


def test_demo_recipe_loads_with_paper_defaults():
    recipe = load_recipe("jobs/recipes/demo.yaml")
    names = recipe.stage_names
    assert names[:3] == ["basic", "laion2b", "align"]
    assert names.index("metaclip_match") == names.index("metaclip") - 1  # the matching runs first, by itself
    stages = {stage.name: cfg for stage, cfg in recipe.stages}
    assert stages["basic"].min_side == 200 and stages["basic"].max_aspect == 3.0
    assert stages["laion2b"].score_column is None
    assert stages["metaclip_match"].metadata == stages["metaclip"].metadata


def test_overrides_are_yaml_scalars_and_reach_the_config():
    recipe = load_recipe("jobs/recipes/demo.yaml", ["basic.min_side=300", "align.max_images_per_text=5",
                                                    "select=basic_keep", "seed=7"])
    stages = {stage.name: cfg for stage, cfg in recipe.stages}
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
    assert parse_select("status = 'success' AND basic_keep AND NOT align_keep").columns() == ["align_keep", "basic_keep", "status"]
    schema = pa.schema([("basic_keep", pa.bool_()), ("status", pa.string())])
    with pytest.raises(RecipeError, match=r"unknown column\(s\) \['bsic_keep'\]"):
        check_select(parse_select("bsic_keep AND status = 'success'"), schema)
    with pytest.raises(RecipeError, match="not an allowed expression"):
        parse_select("basic_keep AND (")
