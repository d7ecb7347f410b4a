import json

import pytest

from unlearnscope.data import load_samples, parse_spec, tofu
from unlearnscope.data.synthetic import generate_authors
from unlearnscope.errors import DataError, UnknownNameError


def test_synthetic_is_deterministic_and_seed_dependent():
    a = load_samples("synthetic:authors?n_authors=6&seed=3")
    b = load_samples("synthetic:authors?n_authors=6&seed=3")
    c = load_samples("synthetic:authors?n_authors=6&seed=4")
    assert a == b
    assert [s.answer for s in a] != [s.answer for s in c]


def test_synthetic_splits_partition_by_author():
    splits = generate_authors(n_authors=10, questions_per_author=4, forget_fraction=0.2, seed=1)
    forget_authors = {s.get("author") for s in splits["forget"]}
    retain_authors = {s.get("author") for s in splits["retain"]}
    holdout_authors = {s.get("author") for s in splits["holdout"]}
    assert forget_authors == {8, 9}
    assert retain_authors == set(range(8))
    assert holdout_authors.isdisjoint(forget_authors | retain_authors)
    assert len(splits["forget"]) + len(splits["retain"]) == len(splits["full"]) == 40
    for sample in splits["full"]:
        perturbed = sample.get("perturbed_answer")
        assert len(perturbed) == 3
        assert sample.get("paraphrased_answer") not in perturbed
        assert sample.answer not in perturbed


def test_spec_options_are_typed_and_unknown_options_rejected():
    assert parse_spec("synthetic:authors/forget?n_authors=7&forget_fraction=0.5") == (
        "synthetic", "authors/forget", {"n_authors": 7, "forget_fraction": 0.5})
    with pytest.raises(DataError, match="n_authors"):
        load_samples("synthetic:authors?n_authors=many")
    with pytest.raises(DataError, match="colour"):
        load_samples("synthetic:authors?colour=blue")


def test_unknown_dataset_kind_is_named():
    with pytest.raises(UnknownNameError, match="unknown dataset kind 'wikipedia'"):
        load_samples("wikipedia:en")
    with pytest.raises(DataError, match="kind:target"):
        load_samples("forget10")


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_loads_fields_and_keeps_extra(tmp_path):
    path = _write(tmp_path / "qa.jsonl", [
        json.dumps({"q": "Who?", "a": "Me.", "topic": "x", "key": "k1"}),
        "",
        json.dumps({"q": "Why?", "a": "Because.", "topic": "y", "key": "k2"}),
    ])
    samples = load_samples(f"jsonl:{path}", question_field="q", answer_field="a", id_field="key")
    assert [s.id for s in samples] == ["k1", "k2"]
    assert samples[1].question == "Why?" and samples[1].extra == {"topic": "y"}


@pytest.mark.parametrize(("line", "message"), [
    ('{"question": "Who?", "answer": "Me."', "line 2.*malformed JSON"),
    ('{"question": "Who?"}', "line 2, field 'answer': missing field"),
    ('{"question": "Who?", "answer": "   "}', "line 2, field 'answer': empty value"),
    ('{"question": "Who?", "answer": 3}', "line 2, field 'answer': expected a string"),
    ('["question", "answer"]', "line 2: expected a JSON object"),
])
def test_jsonl_errors_name_file_line_and_field(tmp_path, line, message):
    path = _write(tmp_path / "bad.jsonl", ['{"question": "Q?", "answer": "A."}', line])
    with pytest.raises(DataError, match=message) as info:
        load_samples(f"jsonl:{path}")
    assert str(path) in str(info.value)


def test_jsonl_duplicate_ids_rejected(tmp_path):
    row = json.dumps({"question": "Q?", "answer": "A.", "id": 1})
    path = _write(tmp_path / "dup.jsonl", [row, row])
    with pytest.raises(DataError, match="line 2, field 'id': duplicate id '1'"):
        load_samples(f"jsonl:{path}", id_field="id")


def test_tofu_local_folder_layout(tmp_path):
    rows = [{"question": f"Q{i}?", "answer": f"A{i}."} for i in range(3)]
    _write(tmp_path / "forget01.json", [json.dumps(r) for r in rows])
    perturbed = [{**r, "paraphrased_answer": "P.", "perturbed_answer": ["X.", "Y."],
                  "paraphrased_question": "PQ?"} for r in rows]
    _write(tmp_path / "forget01_perturbed.json", [json.dumps(r) for r in perturbed])
    samples = load_samples("tofu:forget01", data_dir=str(tmp_path))
    # one id per question: the plain file's rows are named like its _perturbed twin's
    assert [s.id for s in samples] == ["forget01_perturbed-00000", "forget01_perturbed-00001",
                                       "forget01_perturbed-00002"]
    assert samples[0].get("author") == 198  # forget01 = the last 2 of 200 authors
    pert = load_samples("tofu:forget01_perturbed", data_dir=str(tmp_path))
    assert [s.id for s in pert] == [s.id for s in samples]
    assert [s.question for s in pert] == [s.question for s in samples]
    assert pert[2].get("perturbed_answer") == ["X.", "Y."]
    with pytest.raises(DataError, match="unknown TOFU split"):
        load_samples("tofu:forget02", data_dir=str(tmp_path))
    with pytest.raises(DataError, match="not found"):
        load_samples("tofu:retain90", data_dir=str(tmp_path))


def _movielens_100k(folder):
    folder.mkdir()
    ratings = []
    for user in (1, 2, 3):
        for movie in range(1, 8):
            rating = 5 if (user + movie) % 2 else 2
            ratings.append(f"{user}\t{movie}\t{rating}\t{1000 * movie + user}")
    _write(folder / "u.data", ratings)
    _write(folder / "u.item", [f"{m}|Movie {m} (1990)|01-Jan-1990||url|0|1" for m in range(1, 8)])
    _write(folder / "u.user", [f"{u}|{20 + u}|F|writer|0000{u}" for u in (1, 2, 3)])
    return folder


def test_movielens_100k_users_history_and_answers(tmp_path):
    folder = _movielens_100k(tmp_path / "ml-100k")
    spec = f"movielens:{folder}?history=3&candidates_per_user=2"
    everyone = load_samples(spec + "&split=all")
    assert len(everyone) == 6
    first = everyone[0]  # user 1, candidate = 6th movie by time (movie 6), rating 5
    assert first.id == "u00001-c0" and first.get("movie") == 6
    assert first.answer == "Yes"
    assert "Movie 3 (1990): 2/5; Movie 4 (1990): 5/5; Movie 5 (1990): 2/5" in first.question
    forget = load_samples(spec + "&split=forget&users=2")
    retain = load_samples(spec + "&split=retain&users=2")
    assert {s.get("user") for s in forget} == {2}
    assert {s.get("user") for s in retain} == {1, 3}


def test_movielens_candidates_are_the_latest_ratings_with_full_history(tmp_path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    # user 1: 12 ratings, movie m at time 10 * m; user 2: 14 ratings, times reversed
    ratings = [f"1\t{m}\t{5 if m % 2 else 1}\t{10 * m}" for m in range(1, 13)]
    ratings += [f"2\t{m}\t4\t{1000 - m}" for m in range(1, 15)]
    _write(folder / "u.data", ratings)
    _write(folder / "u.item", [f"{m}|Movie {m} (1990)|01-Jan-1990||url|0|1" for m in range(1, 15)])
    _write(folder / "u.user", ["1|30|F|writer|00001", "2|40|M|artist|00002"])
    samples = load_samples(f"movielens:{folder}?history=10&candidates_per_user=3&split=all")
    by_user = {u: [s for s in samples if s.get("user") == u] for u in (1, 2)}
    # user 1 has 2 ratings with 10 earlier ones: movies 11 and 12 (the latest)
    assert [(s.id, s.get("movie")) for s in by_user[1]] == [("u00001-c0", 11), ("u00001-c1", 12)]
    assert by_user[1][1].answer == "No"  # movie 12 was rated 1
    listing = "; ".join(f"Movie {m} (1990): {5 if m % 2 else 1}/5" for m in range(2, 12))
    assert f"recently rated: {listing}. Will this user like Movie 12 (1990)?" in by_user[1][1].question
    # user 2 has enough ratings for all 3: the three latest by time are movies 3, 2, 1
    assert [s.get("movie") for s in by_user[2]] == [3, 2, 1]
    listing = "; ".join(f"Movie {m} (1990): 4/5" for m in range(11, 1, -1))
    assert f"recently rated: {listing}. Will this user like Movie 1 (1990)?" in by_user[2][2].question


def test_movielens_1m_layout_and_bad_line(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    _write(folder / "ratings.dat", [f"1::{m}::{4 if m % 2 else 1}::{m}" for m in range(1, 6)])
    _write(folder / "movies.dat", [f"{m}::Film {m} (2000)::Drama" for m in range(1, 6)])
    _write(folder / "users.dat", ["1::F::25::10::12345"])
    samples = load_samples(f"movielens:{folder}?history=2&candidates_per_user=1&split=all")
    assert len(samples) == 1 and samples[0].answer == "Yes"  # movie 5, rating 4
    _write(folder / "ratings.dat", ["1::1::4::1", "1::two::4::2"])
    with pytest.raises(DataError, match=r"ratings.dat, line 2, field 'item_id'"):
        load_samples(f"movielens:{folder}?split=all")


@pytest.mark.integration
def test_real_tofu_folder_has_all_splits(real_tofu_dir):
    folder = real_tofu_dir
    sizes = {split: len(load_samples(f"tofu:{split}", data_dir=str(folder))) for split in
             ("forget01", "forget10_perturbed", "retain90", "holdout10", "real_authors_perturbed",
              "world_facts_perturbed", "retain_perturbed")}
    assert sizes == {"forget01": 40, "forget10_perturbed": 400, "retain90": 3600,
                     "holdout10": 400, "real_authors_perturbed": 100,
                     "world_facts_perturbed": 117, "retain_perturbed": 400}
    forget10 = load_samples("tofu:forget10", data_dir=str(folder))
    full = load_samples("tofu:full", data_dir=str(folder))
    assert forget10[0].question == full[3600].question
    assert forget10[0].get("author") == 180
    assert full[3600].id == "full-03600"


@pytest.mark.integration
@pytest.mark.parametrize("split", ["forget01", "forget05", "forget10", "real_authors",
                                   "world_facts"])
def test_real_tofu_twins_give_a_question_one_id(real_tofu_dir, split):
    """A split and its _perturbed twin list the same questions in the same order; both readers
    give each question the twin's id (the spelling of the demo and the committed study)."""
    plain = load_samples(f"tofu:{split}", data_dir=str(real_tofu_dir))
    twin = load_samples(f"tofu:{split}_perturbed", data_dir=str(real_tofu_dir))
    assert [(s.id, s.question, s.answer) for s in plain] == \
        [(s.id, s.question, s.answer) for s in twin]
    assert plain[3].id == f"{split}_perturbed-00003"


def test_tofu_ids_of_other_splits_keep_their_name(tmp_path):
    for split in ("retain90", "holdout01", "retain_perturbed", "full"):
        _write(tmp_path / f"{split}.json", [json.dumps({"question": "Q?", "answer": "A."})])
        assert load_samples(f"tofu:{split}", data_dir=str(tmp_path))[0].id == f"{split}-00000"


def test_tofu_evaluation_splits_of_a_forget_split():
    assert tofu.evaluation_splits("forget05") == {
        "forget": "forget05_perturbed", "holdout": "holdout05",
        "retain_perturbed": "retain_perturbed", "real_authors": "real_authors_perturbed",
        "world_facts": "world_facts_perturbed"}
    assert tofu.evaluation_splits("forget10")["holdout"] == "holdout10"
    assert set(tofu.evaluation_splits("forget01").values()) <= set(tofu.SPLITS)
    for name in ("forget10_perturbed", "forget5", "retain90", "holdout01"):
        with pytest.raises(DataError, match=f"'{name}' is not forgetXX") as error:
            tofu.evaluation_splits(name, field="--forget-split")
        assert error.value.field == "--forget-split"
    assert [tofu.forget_percent(s) for s in ("forget01", "forget10_perturbed", "retain90")] == [
        1, 10, None]
