"""Results: summary arithmetic by hand, and the TSV round trip (including crash leftovers)."""

import pytest

from ensemblecert import ABSTAIN, Certificate, ExampleResult, UserError, summarize
from ensemblecert.smoothing.results import Outcome, ResultsWriter, read_results


def result(index, label, prediction, radius, samples=100, seconds=0.5, name="cohen"):
    return ExampleResult(index, label, {name: Outcome(Certificate(prediction, radius, samples), seconds)})


RESULTS = [
    result(0, 1, 1, 0.6),
    result(1, 2, 2, 0.2),
    result(2, 3, 4, 0.9),  # wrong: counts for nothing
    result(3, 0, ABSTAIN, 0.0),
]


def test_certified_accuracy_and_acr_by_hand():
    s = summarize(RESULTS, ["cohen"], [0.0, 0.25, 0.5, 0.75])
    m = s.certifiers["cohen"]
    assert s.examples == 4
    assert m.certified_accuracy == {0.0: 0.5, 0.25: 0.25, 0.5: 0.25, 0.75: 0.0}
    assert m.acr == pytest.approx((0.6 + 0.2) / 4)
    assert m.abstain_rate == 0.25 and m.mean_samples == 100 and m.mean_seconds == 0.5


def test_tsv_round_trip_and_crash_leftovers(tmp_path):
    path = tmp_path / "certification.tsv"
    path.write_text("")  # created but the header never made it
    assert read_results(path, ["cohen"]) == []
    with ResultsWriter(path, ["cohen"]) as writer:
        for r in RESULTS:
            writer.write(r)
    with open(path, "a") as fh:
        fh.write("4\t1\t1\t0.3")  # half-written row
    back = read_results(path, ["cohen"])
    assert back == RESULTS
    assert path.read_text().endswith("\n")  # the partial row was removed
    assert (
        path.read_text().splitlines()[0]
        == "idx\tlabel\tpredict\tradius\tcorrect\ttime\tsamples\tevaluations\tclassifier"
    )
    with pytest.raises(UserError, match="do not match this pipeline's certifiers"):
        read_results(path, ["cohen", "other"])


def test_several_certifiers_get_their_own_columns(tmp_path):
    path = tmp_path / "certification.tsv"
    both = ExampleResult(
        7, 3, {"a": Outcome(Certificate(3, 0.4, 10), 0.1), "b": Outcome(Certificate(ABSTAIN, 0.0, 20), 0.2)}
    )
    with ResultsWriter(path, ["a", "b"]) as writer:
        writer.write(both)
    header, row = path.read_text().splitlines()
    cols = dict(zip(header.split("\t"), row.split("\t")))
    assert (
        cols["predict"] == "3" and cols["a:radius"] == "0.4" and cols["b:predict"] == "-1" and cols["b:samples"] == "20"
    )
    assert read_results(path, ["a", "b"]) == [both]


@pytest.mark.parametrize(
    "row, expected",
    [
        ("0\t1\t1\tabc\t1\t0.5\t100\t300\thard\n", "line 2: column 'radius' holds 'abc', not a number"),
        ("0\t1\t1\tnan\t1\t0.5\t100\t300\thard\n", "line 2: column 'radius' holds 'nan', not a number"),
        ("0\tseven\t1\t0.3\t1\t0.5\t100\t300\thard\n", "line 2: column 'label' holds 'seven', not an integer"),
    ],
)
def test_damaged_rows_are_a_user_error(tmp_path, row, expected):
    path = tmp_path / "certification.tsv"
    path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\tsamples\tevaluations\tclassifier\n" + row)
    with pytest.raises(UserError, match=expected):
        read_results(path, ["cohen"])


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00\xff", b"idx\tlabel\x00\n"])
def test_binary_content_is_a_user_error(tmp_path, content):
    path = tmp_path / "certification.tsv"
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"certification.tsv: not a results table \(binary content\); run with --fresh"):
        read_results(path, ["cohen"])


def test_details_and_costs_become_columns_and_come_back(tmp_path):
    path = tmp_path / "certification.tsv"
    first = ExampleResult(
        0, 1, {"adp": Outcome(Certificate(1, 0.25, 1100, {"stage": 2.0, "p_lower": 0.9}), 0.1, 3300, 800)}
    )
    second = ExampleResult(
        1, 2, {"adp": Outcome(Certificate(ABSTAIN, 0.0, 100, {"stage": 1.0, "p_lower": 0.4}), 0.1, 300, 50)}
    )
    with ResultsWriter(path, ["adp"]) as writer:
        writer.write(first)
    with ResultsWriter(path, ["adp"]) as writer:  # a resumed run appends under the same header
        writer.write(second)
    header, *rows = path.read_text().splitlines()
    assert header.split("\t")[9:] == ["adp:stage", "adp:p_lower", "adp:kcr"]
    assert rows[0].split("\t")[6:] == ["1100", "3300", "hard", "2.0", "0.9", repr(800 / 1100)]
    assert read_results(path, ["adp"]) == [first, second]
    summary = summarize([first, second], ["adp"], [0.0], members=3).certifiers["adp"]
    assert summary.mean_samples == 600 and summary.median_samples == 600
    assert summary.mean_evaluations == 1800 and summary.evaluation_share == pytest.approx(3600 / (3 * 1200))
    assert summary.details == pytest.approx({"stage": 1.5, "p_lower": 0.65, "kcr": (800 / 1100 + 0.5) / 2})


def test_a_row_missing_a_detail_leaves_its_cell_empty(tmp_path):
    path = tmp_path / "certification.tsv"
    full = ExampleResult(0, 1, {"c": Outcome(Certificate(1, 0.3, 10, {"count": 9.0}), 0.1)})
    bare = ExampleResult(1, 1, {"c": Outcome(Certificate(1, 0.3, 10), 0.1)})
    with ResultsWriter(path, ["c"]) as writer:
        writer.write(full)
        writer.write(bare)
    assert path.read_text().splitlines()[2].split("\t")[-3:] == ["", "hard", ""]  # no evaluations, no count
    assert read_results(path, ["c"]) == [full, bare]
