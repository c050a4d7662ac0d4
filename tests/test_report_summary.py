"""The printed run summary: ground-truth lines read as sentences, not as None placeholders."""

from curate.reports.summary import summary


def test_ground_truth_lines_for_stages_with_and_without_targets():
    report = {
        "rows_in": 10, "rows_out": 6, "select": "basic_keep AND dbp_keep",
        "stages": {"basic": {"removed": 3, "removed_only_by_this_stage": 3, "by_reason": {"too_small": 3, "None": 7}},
                   "dbp": {"removed": 2, "removed_only_by_this_stage": 1, "by_reason": {"pruned": 2}}},
        "ground_truth": {
            "stages": {"basic": {"targets": ["small_image"], "precision": 1.0, "recall": 0.75, "precision_vs_clean": 1.0},
                       "dbp": {"targets": [], "precision": 0.5, "recall": None, "precision_vs_clean": None}},
            "clean_kept": 0.9, "defects_removed": 0.8},
    }
    text = summary(report)
    assert "None" not in text
    assert "  basic: removes 3 (3 only here): too_small=3" in text
    assert "  ground truth basic: precision 1.0, recall 0.75 of ['small_image']; vs clean rows: precision 1.0" in text
    assert "  ground truth dbp: no known defect is its target; 0.5 of the rows it removes carry one" in text
    assert text.splitlines()[-1] == "  clean samples kept: 0.9, known defects removed: 0.8"
