"""open-unlearning interop on small hand-written files in its formats: evaluation logs in,
per-index weight files out."""

import json
import logging
import math

import numpy as np
import pandas as pd
import pytest

from unlearnscope.cli import main
from unlearnscope.errors import DataError, UnknownNameError
from unlearnscope.evaluation.open_unlearning import (
    import_outcomes,
    read_retain_logs,
    read_weights,
    sample_id,
    split_sample_id,
    weight_table,
    write_weights,
)
from unlearnscope.layout import read_outcome_files, read_outcomes

# TOFU_EVAL.json as open-unlearning writes it (json.dump, indent 4): per-row probability and
# mean answer loss (avg_loss = -ln prob), ROUGE, and aggregate-only entries we ignore.
BEFORE = """{
    "forget_Q_A_Prob": {
        "agg_value": 0.7333333333333334,
        "value_by_index": {
            "0": {"prob": 0.8, "avg_loss": 0.2231435513142097},
            "1": {"prob": 0.5, "avg_loss": 0.6931471805599453},
            "2": {"prob": 0.9, "avg_loss": 0.10536051565782628}
        }
    },
    "forget_Q_A_ROUGE": {
        "agg_value": 0.9,
        "value_by_index": {
            "0": {"rouge1_recall": 1.0, "rougeL_f1": 0.9, "rougeL_recall": 1.0,
                  "input": "Q0", "ground_truth": "A0", "generation": "A0"},
            "1": {"rouge1_recall": 0.8, "rougeL_f1": 0.8, "rougeL_recall": 0.75,
                  "input": "Q1", "ground_truth": "A1", "generation": "A1"},
            "2": {"rouge1_recall": 1.0, "rougeL_f1": 1.0, "rougeL_recall": 0.95,
                  "input": "Q2", "ground_truth": "A2", "generation": "A2"}
        }
    },
    "forget_quality": {"agg_value": 0.01}
}
"""
AFTER = """{
    "forget_Q_A_Prob": {
        "agg_value": 0.4166666666666667,
        "value_by_index": {
            "0": {"prob": 0.2, "avg_loss": 1.6094379124341003},
            "1": {"prob": 0.6, "avg_loss": 0.5108256237659907},
            "2": {"prob": 0.45, "avg_loss": 0.7985076962177716}
        }
    },
    "forget_Q_A_ROUGE": {
        "agg_value": 0.5,
        "value_by_index": {
            "0": {"rouge1_recall": 0.2, "rougeL_f1": 0.2, "rougeL_recall": 0.25,
                  "input": "Q0", "ground_truth": "A0", "generation": "x"},
            "1": {"rouge1_recall": 0.8, "rougeL_f1": 0.8, "rougeL_recall": 0.75,
                  "input": "Q1", "ground_truth": "A1", "generation": "A1"},
            "2": {"rouge1_recall": 0.5, "rougeL_f1": 0.5, "rougeL_recall": 0.5,
                  "input": "Q2", "ground_truth": "A2", "generation": "y"}
        }
    }
}
"""


@pytest.fixture
def logs(tmp_path):
    before, after = tmp_path / "before.json", tmp_path / "after.json"
    before.write_text(BEFORE)
    after.write_text(AFTER)
    return before, after


def _eval_log(path, probs, metric="forget_Q_A_Prob"):
    """A TOFU_EVAL.json with one per-row metric; a None probability is a null row."""
    rows = {str(i): None if p is None else {"prob": p, "avg_loss": -math.log(p)}
            for i, p in enumerate(probs)}
    path.write_text(json.dumps({metric: {"agg_value": 0.5, "value_by_index": rows}}, indent=4))
    return path


def test_import_gives_the_hand_computed_outcomes(logs):
    table = import_outcomes(*logs, id_prefix="toy")
    assert table["sample_id"].tolist() == ["toy-00000", "toy-00001", "toy-00002"]
    # efficacy = 1 - p_after / p_before, clipped at 0: 1 - 0.2/0.8, 1 - 0.6/0.5 < 0, 1 - 0.45/0.9
    np.testing.assert_allclose(table["efficacy"], [0.75, 0.0, 0.5], atol=1e-12)
    np.testing.assert_allclose(table["prob_before"], [0.8, 0.5, 0.9], atol=1e-12)
    np.testing.assert_allclose(table["prob_after"], [0.2, 0.6, 0.45], atol=1e-12)
    np.testing.assert_allclose(table["delta_loss"], [math.log(4), math.log(5 / 6), math.log(2)],
                               atol=1e-12)
    np.testing.assert_allclose(table["rouge_drop"], [0.75, 0.0, 0.45], atol=1e-12)


def test_rows_with_only_a_probability_use_its_negative_log(tmp_path):
    before = tmp_path / "b.json"
    before.write_text(json.dumps({"forget_Q_A_Prob": {"value_by_index": {
        "0": {"prob": 0.5}, "1": {"prob": 0.25}}}}))
    after = _eval_log(tmp_path / "a.json", [0.25, 0.25])
    table = import_outcomes(before, after, id_prefix="toy")
    np.testing.assert_allclose(table["loss_before"], [math.log(2), math.log(4)])
    np.testing.assert_allclose(table["efficacy"], [0.5, 0.0], atol=1e-12)
    assert "rouge_drop" not in table


def test_tofu_split_is_inferred_from_the_number_of_rows(tmp_path):
    probs = list(np.linspace(0.9, 0.5, 40))
    before = _eval_log(tmp_path / "b.json", probs)
    after = _eval_log(tmp_path / "a.json", [p / 2 for p in probs])
    table = import_outcomes(before, after)
    # the ids tofu:forget01 and tofu:forget01_perturbed give these questions
    assert table["sample_id"].iloc[0] == "forget01_perturbed-00000"
    assert table["sample_id"].iloc[-1] == "forget01_perturbed-00039"
    np.testing.assert_allclose(table["efficacy"], 0.5)
    for named in ("forget01", "forget01_perturbed"):
        assert import_outcomes(before, after, id_prefix=named)[
            "sample_id"].iloc[3] == "forget01_perturbed-00003"
    for wrong in ("forget10", "forget05_perturbed"):
        with pytest.raises(DataError, match=rf"b\.json, field 'id_prefix': 40 rows .* {wrong} has"):
            import_outcomes(before, after, id_prefix=wrong)


def test_a_count_of_no_tofu_split_asks_for_the_prefix(logs):
    with pytest.raises(DataError, match=r"before\.json, field 'id_prefix': 3 rows are not"):
        import_outcomes(*logs)


def test_null_rows_are_left_out_with_a_warning(tmp_path, caplog):
    before = _eval_log(tmp_path / "b.json", [0.8, 0.5, 0.9])
    after = _eval_log(tmp_path / "a.json", [0.4, None, 0.9])
    with caplog.at_level(logging.WARNING):
        table = import_outcomes(before, after, id_prefix="toy")
    assert table["sample_id"].tolist() == ["toy-00000", "toy-00002"]
    np.testing.assert_allclose(table["efficacy"], [0.5, 0.0], atol=1e-12)
    assert "1 of 3 rows are null" in caplog.text


@pytest.mark.parametrize(("edit", "message"), [
    (lambda logs: logs.pop("forget_Q_A_Prob"), r"field 'forget_Q_A_Prob': no metric"),
    (lambda logs: logs["forget_Q_A_Prob"]["value_by_index"]["1"].update(avg_loss="high"),
     r"field 'forget_Q_A_Prob\.value_by_index\.1\.avg_loss': expected a number"),
    (lambda logs: logs["forget_Q_A_Prob"]["value_by_index"]["1"].update(avg_loss=[0.1, 0.2]),
     r"value_by_index\.1\.avg_loss': expected a number, got a list"),
    (lambda logs: logs["forget_Q_A_Prob"]["value_by_index"].pop("2"),
     r"field 'forget_Q_A_Prob\.value_by_index': the two logs evaluated different rows"),
    (lambda logs: logs["forget_Q_A_Prob"]["value_by_index"].update({"x": {"prob": 0.5}}),
     r"field 'forget_Q_A_Prob\.value_by_index': row key 'x' is not a row number"),
    (lambda logs: logs["forget_Q_A_Prob"]["value_by_index"].update({"0": {"score": 1.0}}),
     r"field 'forget_Q_A_Prob\.value_by_index\.0': neither 'avg_loss' nor 'prob'"),
    (lambda logs: logs["forget_Q_A_ROUGE"]["value_by_index"]["0"].pop("rougeL_recall"),
     r"field 'forget_Q_A_ROUGE\.value_by_index\.0\.rougeL_recall': missing"),
])
def test_bad_logs_name_the_file_and_the_field(logs, edit, message):
    before, after = logs
    data = json.loads(after.read_text())
    edit(data)
    after.write_text(json.dumps(data))
    with pytest.raises(DataError, match=message) as info:
        import_outcomes(before, after, id_prefix="toy")
    assert str(info.value).startswith(str(after))


def test_retain_logs_of_open_unlearning_map_rows_to_forget_ids(tmp_path, caplog):
    ids = ["f-0", "f-1", "f-2"]
    path = tmp_path / "TOFU_EVAL.json"
    path.write_text(json.dumps({
        "forget_truth_ratio": {"agg_value": 0.6, "value_by_index": {
            "2": {"score": 0.25}, "0": {"score": 0.5}, "1": None}},
        "mia_min_k": {"agg_value": 0.375}}))
    with caplog.at_level(logging.WARNING):
        reference = read_retain_logs(path, ids)
    assert reference.truth_ratios == {"f-2": 0.25, "f-0": 0.5}
    assert reference.mia_auc == 0.375
    assert "1 rows of forget_truth_ratio are null" in caplog.text
    with pytest.raises(DataError, match="row 2 is beyond the 2 forget samples"):
        read_retain_logs(path, ids[:2])
    path.write_text(json.dumps({"forget_truth_ratio": {"value_by_index": {"0": {"x": 1}}}}))
    with pytest.raises(DataError, match=r"value_by_index\.0\.score': expected a number"):
        read_retain_logs(path, ids)


def test_retain_logs_of_evaluate_and_their_split(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"forget_split": "forget05", "mia_min_k": 0.5,
                                "forget_truth_ratios": {"a": 1, "b": 0.5}}))
    reference = read_retain_logs(path, ["ignored"], "forget05")
    assert (reference.truth_ratios, reference.mia_auc) == ({"a": 1.0, "b": 0.5}, 0.5)
    assert read_retain_logs(path, []).truth_ratios == {"a": 1.0, "b": 0.5}
    with pytest.raises(DataError, match="logs are for forget05, not forget10"):
        read_retain_logs(path, [], "forget10")
    path.write_text(json.dumps({"forget_quality": 0.1}))
    with pytest.raises(DataError, match=r"neither an `evaluate` metrics\.json"):
        read_retain_logs(path, [])


def test_malformed_json_names_the_file_and_line(logs):
    before, after = logs
    after.write_text('{\n"forget_Q_A_Prob": {,}\n}')
    with pytest.raises(DataError, match=rf"{after}, line 2: malformed JSON"):
        import_outcomes(before, after, id_prefix="toy")


def test_import_command_writes_outcomes_validate_and_anchors_read(logs, tmp_path, capsys):
    out = tmp_path / "npo"
    before, after = logs
    assert main(["import-open-unlearning", "--before", str(before), "--after", str(after),
                 "--id-prefix", "toy", "--method", "NPO", "--out", str(out)]) == 0
    outcomes = read_outcomes(out / "outcomes.parquet")
    np.testing.assert_allclose(outcomes["efficacy"], [0.75, 0.0, 0.5], atol=1e-12)
    assert list(read_outcome_files([str(out)])) == ["NPO"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_forget"] == 3 and summary["mean_efficacy"] == pytest.approx(1.25 / 3)
    assert json.loads((out / "config.json").read_text())["command"] == "import-open-unlearning"
    assert "mean efficacy 0.4167" in capsys.readouterr().out


def test_bad_log_is_a_clean_command_error(logs, tmp_path, capsys):
    before, _ = logs
    code = main(["import-open-unlearning", "--before", str(before), "--after",
                 str(tmp_path / "missing.json"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert f"{tmp_path / 'missing.json'}: file not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# --- weights ---

def _scores(path):
    """Rows out of order; loss difficulty 0.3, -1.0, 2.0 for rows 2, 0, 1; MRD values."""
    frame = pd.DataFrame({
        "sample_id": ["forget01-00002", "forget01-00000", "forget01-00001"] * 2,
        "scorer": ["loss"] * 3 + ["mrd"] * 3,
        "value": [0.3, -1.0, 2.0, 0.1, 0.6, 0.2],
        "difficulty": [0.3, -1.0, 2.0, -0.1, -0.6, -0.2],
    })
    frame.to_parquet(path)
    return path


def test_ease_weights_are_the_rank_of_ease_scaled_to_mean_1(tmp_path):
    table, prefix = weight_table(_scores(tmp_path / "s.parquet"), "loss")
    assert prefix == "forget01"
    assert table["index"].tolist() == [0, 1, 2]
    assert table["sample_id"].tolist() == ["forget01-00000", "forget01-00001", "forget01-00002"]
    np.testing.assert_allclose(table["difficulty"], [-1.0, 2.0, 0.3])
    # ease ranks: row 1 (hardest) 1, row 2 2, row 0 (easiest) 3; mean rank 2
    np.testing.assert_allclose(table["weight"], [1.5, 0.5, 1.0])


def test_mrd_ease_weights_are_its_values_and_hardness_the_rank_of_difficulty(tmp_path):
    scores = _scores(tmp_path / "s.parquet")
    mrd, _ = weight_table(scores, "mrd")
    np.testing.assert_allclose(mrd["weight"], np.array([0.6, 0.2, 0.1]) / 0.3)
    hard, _ = weight_table(scores, "loss", weighting="hardness")
    np.testing.assert_allclose(hard["weight"], [0.5, 1.5, 1.0])


def test_exported_weights_read_back_with_the_same_ranking(tmp_path):
    scores = _scores(tmp_path / "s.parquet")
    for scorer in ("loss", "mrd"):
        table, prefix = weight_table(scores, scorer)
        path = tmp_path / f"{scorer}.json"
        write_weights(path, table, scorer=scorer, weighting="ease", id_prefix=prefix)
        back = read_weights(path)
        pd.testing.assert_frame_equal(back, table, check_dtype=False)
        by_difficulty = back.sort_values("difficulty")["sample_id"].tolist()
        by_weight = back.sort_values("weight", ascending=False)["sample_id"].tolist()
        assert by_difficulty == by_weight  # easiest first both ways
        record = json.loads(path.read_text())
        assert record["value_by_index"]["1"]["sample_id"] == "forget01-00001"
        assert record["n"] == 3 and record["scorer"] == scorer


def test_export_command(tmp_path, capsys):
    scores, out = _scores(tmp_path / "s.parquet"), tmp_path / "w.json"
    assert main(["export-weights", "--scores", str(scores), "--scorer", "loss",
                 "--weighting", "hardness", "--out", str(out)]) == 0
    np.testing.assert_allclose(read_weights(out)["weight"], [0.5, 1.5, 1.0])
    assert json.loads(out.read_text())["weighting"] == "hardness"
    assert "3 rows of forget01" in capsys.readouterr().out


def test_ids_that_name_no_row_are_refused(tmp_path):
    path = tmp_path / "s.parquet"
    pd.DataFrame({"sample_id": ["a000-q00", "a000-q01"], "scorer": "loss",
                  "value": [1.0, 2.0], "difficulty": [1.0, 2.0]}).to_parquet(path)
    with pytest.raises(DataError, match=rf"{path}, field 'sample_id': sample id 'a000-q00'"):
        weight_table(path, "loss")


def test_ids_of_two_splits_or_another_prefix_are_refused(tmp_path):
    path = tmp_path / "s.parquet"
    pd.DataFrame({"sample_id": ["forget01-00000", "forget05-00001"], "scorer": "loss",
                  "value": [1.0, 2.0], "difficulty": [1.0, 2.0]}).to_parquet(path)
    with pytest.raises(DataError, match=r"field 'sample_id': sample ids come from forget01, "
                                        r"forget05, expected one split"):
        weight_table(path, "loss")
    with pytest.raises(DataError, match=r"expected 'forget10_perturbed'"):
        weight_table(_scores(tmp_path / "t.parquet"), "loss", id_prefix="forget10")


def test_weights_of_the_twin_spellings(tmp_path):
    """`--id-prefix forget01` takes the ids tofu:forget01 gives (`forget01_perturbed-<row>`) and
    those of a table written before they took that spelling (`forget01-<row>`)."""
    old = _scores(tmp_path / "old.parquet")
    table, prefix = weight_table(old, "loss", id_prefix="forget01")
    assert prefix == "forget01" and table["index"].tolist() == [0, 1, 2]
    frame = pd.read_parquet(old)
    frame["sample_id"] = frame["sample_id"].str.replace("forget01-", "forget01_perturbed-")
    frame.to_parquet(tmp_path / "new.parquet")
    for named in ("forget01", "forget01_perturbed"):
        renamed, prefix = weight_table(tmp_path / "new.parquet", "loss", id_prefix=named)
        assert prefix == "forget01_perturbed"
        np.testing.assert_allclose(renamed["weight"], table["weight"])


def test_unknown_scorer_and_missing_file(tmp_path):
    with pytest.raises(UnknownNameError, match=r"unknown scorer.* 'cud'; known: loss, mrd"):
        weight_table(_scores(tmp_path / "s.parquet"), "cud")
    with pytest.raises(DataError, match=r"nope\.parquet: score table not found"):
        weight_table(tmp_path / "nope.parquet", "loss")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda r: r.update(format="other"), r"field 'format': expected format"),
    (lambda r: r["value_by_index"]["0"].update(weight=-1.0),
     r"field 'value_by_index\.0\.weight': negative weight"),
    (lambda r: r["value_by_index"]["2"].pop("sample_id"),
     r"field 'value_by_index\.2\.sample_id'"),
    (lambda r: r["value_by_index"]["1"].update(difficulty=None),
     r"field 'value_by_index\.1\.difficulty': expected a number"),
    (lambda r: r.update(n=4), r"field 'n': says 4 rows, holds 3"),
])
def test_bad_weight_files_name_the_file_and_field(tmp_path, edit, message):
    table, prefix = weight_table(_scores(tmp_path / "s.parquet"), "loss")
    path = tmp_path / "w.json"
    write_weights(path, table, scorer="loss", weighting="ease", id_prefix=prefix)
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))
    with pytest.raises(DataError, match=message) as info:
        read_weights(path)
    assert str(info.value).startswith(str(path))


def test_sample_ids_and_rows_map_both_ways():
    assert sample_id("forget10", 3) == "forget10-00003"
    assert split_sample_id("forget10-00003") == ("forget10", 3)
    assert split_sample_id("forget05_perturbed-00123") == ("forget05_perturbed", 123)
