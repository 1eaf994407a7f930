"""mercure's rules mean the same here: a table of rules from mercure's documentation, its
evaluator (app/common/rule_evaluation.py) and issue 16, each with the tags mercure's receiver
would write and the result mercure gives (tests/data/mercure_rules.json says how it was
made). Every rule gives that result, or is refused with a message naming the construct."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pydicom
import pytest

from caduceus.core.dicom.series_tags import read_tags
from caduceus.core.dicom.synthetic import SeriesSpec, write_series
from caduceus.core.rules import RuleError, parse_rule
from caduceus.core.rules.parser import BUILTINS

TABLE: dict[str, Any] = json.loads(
    (Path(__file__).parent / "data" / "mercure_rules.json").read_text()
)
CASES = TABLE["cases"]
# Refused here although mercure answers (with an error), and why.
REFUSED = {
    "tags.Modality.__class__": "attribute '__class__' is not allowed",
    "'{}'.format(1) == '1'": "method 'format' is not allowed",
    "__import__('os')": "function '__import__' is not allowed",
    "open('/etc/passwd')": "function 'open' is not allowed",
}


@pytest.mark.parametrize("case", CASES, ids=[f"{case['tags']}: {case['rule']}" for case in CASES])
def test_mercure_rule_gives_mercures_result(case: dict[str, Any]) -> None:
    tags = TABLE["tags"][case["tags"]]
    if case["expected"] == "refused":
        with pytest.raises(RuleError, match=REFUSED[case["rule"]]):
            parse_rule(case["rule"])
        return
    assert parse_rule(case["rule"]).evaluate(tags) is case["expected"], case["mercure"]


def test_the_table_covers_every_builtin_of_mercures_table() -> None:
    text = " ".join(case["rule"] for case in CASES)
    missing = [name for name in BUILTINS if f"{name}(" not in text]
    assert missing == []
    assert sum(case["expected"] != "refused" for case in CASES) >= 150


def test_private_tags_by_number_and_by_creator() -> None:
    # A device reserves a block for its creator: (0019,0010) here, so (0019,100C) is
    # element 0C of "SIEMENS MR HEADER"; another series may have it at (0019,110C).
    first = {"(0019,0010)": "SIEMENS MR HEADER", "(0019,100C)": "700"}
    second = {"(0019,0011)": "SIEMENS MR HEADER", "(0019,110C)": "700"}
    by_creator = parse_rule("int(tags['(0019,0C,SIEMENS MR HEADER)']) > 500")
    assert by_creator.evaluate(first) is True
    assert by_creator.evaluate(second) is True
    assert by_creator.evaluate({"(0019,100C)": "700"}) is False  # no such creator: missing
    by_number = parse_rule("@(0019,100c)@ == '700' and tags['0019,100C'] == '700'")
    assert by_number.evaluate(first) is True
    assert by_number.evaluate(second) is False
    assert by_number.keywords == frozenset({"(0019,100C)"})
    # A standard tag by number is its keyword.
    assert parse_rule("tags['(0008,0060)'] == 'MR'").keywords == frozenset({"Modality"})


def test_private_tags_are_read_from_the_file(tmp_path: Path) -> None:
    (path,) = write_series(tmp_path, SeriesSpec(count=1, modality="MR"))
    ds = pydicom.dcmread(path)
    block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    block.add_new(0x0C, "IS", "700")
    ds.save_as(path)
    tags = read_tags(path)
    rule = parse_rule("int(tags['(0019,0C,SIEMENS MR HEADER)']) == 700 and @Modality@ == 'MR'")
    assert rule.evaluate(tags) is True


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("tags['Modalty'] == 'MR'", "unknown DICOM keyword or tag 'Modalty'"),
        ("tags[tags.Modality]", "tags[...] takes the name of a tag in quotes"),
        ("@Not A Tag@ == 1", "is not a DICOM keyword or tag"),
        ("sorted([], cmp=1)", "sorted() takes no keyword argument 'cmp'"),
        ("max()", "max() takes at least 1 argument"),
        ("(lambda x=1: x)()", "a lambda takes plain arguments only"),
        ("[1 for tags in ()]", "'tags' cannot be a variable"),
        ("[1 for x.y in ()]", "plain names"),
        ("tags.Modality.upper == 'MR'", "method 'upper' must be called"),
        ("(1).numerator", "attribute 'numerator' is not allowed"),
        ("{**{}}", "'**' in a dict"),
    ],
)
def test_refusals_name_the_construct(text: str, words: str) -> None:
    with pytest.raises(RuleError, match=re.escape(words)):
        parse_rule(text)


def test_tags_as_text_are_what_mercure_gives_its_rules() -> None:
    """A rule with tag_values: text (every rule imported from mercure) sees DICOM's text."""
    from pydicom.valuerep import DS, IS

    from caduceus.core.rules.text_values import as_text

    tags = {"ImageType": ["ORIGINAL", "PRIMARY"], "SeriesNumber": IS("3"), "Thick": DS("1.50")}
    assert as_text(tags) == {
        "ImageType": "ORIGINAL\\PRIMARY",
        "SeriesNumber": "3",
        "Thick": "1.50",
    }
