"""Results: summary arithmetic by hand, and the TSV round trip (including crash leftovers)."""

import pytest

from ensemblecert import ABSTAIN, Certificate, ExampleResult, UserError, summarize
from ensemblecert.results import Outcome, ResultsWriter, read_results


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
    m = s.mechanisms["cohen"]
    assert s.examples == 4
    assert m.certified_accuracy == {0.0: 0.5, 0.25: 0.25, 0.5: 0.25, 0.75: 0.0}
    assert m.acr == pytest.approx((0.6 + 0.2) / 4)
    assert m.abstain_rate == 0.25 and m.mean_samples == 100 and m.mean_seconds == 0.5


def test_tsv_round_trip_and_crash_leftovers(tmp_path):
    path = tmp_path / "certify.tsv"
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
    assert path.read_text().splitlines()[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime\tsamples"
    with pytest.raises(UserError, match="do not match this pipeline's mechanisms"):
        read_results(path, ["cohen", "other"])


def test_several_mechanisms_get_their_own_columns(tmp_path):
    path = tmp_path / "certify.tsv"
    both = ExampleResult(7, 3, {"a": Outcome(Certificate(3, 0.4, 10), 0.1), "b": Outcome(Certificate(ABSTAIN, 0.0, 20), 0.2)})
    with ResultsWriter(path, ["a", "b"]) as writer:
        writer.write(both)
    header, row = path.read_text().splitlines()
    cols = dict(zip(header.split("\t"), row.split("\t")))
    assert cols["predict"] == "3" and cols["a:radius"] == "0.4" and cols["b:predict"] == "-1" and cols["b:samples"] == "20"
    assert read_results(path, ["a", "b"]) == [both]


@pytest.mark.parametrize(
    "row, expected",
    [
        ("0\t1\t1\tabc\t1\t0.5\t100\n", "line 2: column 'radius' holds 'abc', not a number"),
        ("0\t1\t1\tnan\t1\t0.5\t100\n", "line 2: column 'radius' holds 'nan', not a number"),
        ("0\tseven\t1\t0.3\t1\t0.5\t100\n", "line 2: column 'label' holds 'seven', not an integer"),
    ],
)
def test_damaged_rows_are_a_user_error(tmp_path, row, expected):
    path = tmp_path / "certify.tsv"
    path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\tsamples\n" + row)
    with pytest.raises(UserError, match=expected):
        read_results(path, ["cohen"])


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00\xff", b"idx\tlabel\x00\n"])
def test_binary_content_is_a_user_error(tmp_path, content):
    path = tmp_path / "certify.tsv"
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"certify.tsv: not a results table \(binary content\); run with --fresh"):
        read_results(path, ["cohen"])
