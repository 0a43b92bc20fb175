"""A level's utility on the client, without a server: read from the manifest's message, and
given to a result only when the server says it served that very level."""

from __future__ import annotations

import pytest

from del_client.classification import classification_result
from del_client.manifest import PrivacyLevel, percent
from del_client.proto import inference_pb2
from del_client.request import PreparedRequest

UTILITY = inference_pb2.LevelUtility(
    metric="dev accuracy",
    value=0.71,
    nothing_sent=0.52,
    higher_is_better=True,
    better_than_nothing=True,
    measured_on="872 dev sentences",
)


def level(**fields) -> PrivacyLevel:
    return PrivacyLevel.from_pb(inference_pb2.PrivacyLevel(id="t0.10", mu=4.0, **fields))


def test_a_level_reads_its_utility_from_the_manifest_or_has_none():
    measured, unmeasured = level(utility=UTILITY), level()
    assert measured.utility.value == pytest.approx(0.71)
    assert measured.better_than_nothing is True
    assert "dev accuracy 0.710 against 0.520 with nothing sent (higher is better)" in (
        measured.utility.summary()
    )
    assert (unmeasured.utility, unmeasured.better_than_nothing) == (None, None)


@pytest.mark.parametrize(("served", "expected"), [("t0.10", True), ("", None), ("t0.20", None)])
def test_a_classification_carries_the_utility_of_the_level_it_was_served_at(served, expected):
    header = inference_pb2.ClassifyRequest(header=inference_pb2.StreamHeader())
    request = PreparedRequest(
        "r", "binomial", (header,), 4, 1e-5, 1.0, 4.0, 1.0, level=level(utility=UTILITY)
    )
    response = inference_pb2.ClassifyResponse(
        label="positive",
        probabilities=[inference_pb2.LabelProbability(label="positive", probability=1.0)],
        level_id=served,
    )
    assert classification_result(request, response).better_than_nothing is expected


def test_a_level_within_its_sampling_error_of_nothing_is_not_called_better():
    within = inference_pb2.LevelUtility(
        metric="held-out continuation loss (nats/token)",
        value=1.678,
        nothing_sent=1.680,
        higher_is_better=False,
        better_than_nothing=False,  # the server's verdict, with the margin it measured
        measured_on="256 held-out windows",
    )
    utility = level(utility=within).utility
    assert utility.summary().endswith("NOT better than sending nothing (within its sampling error)")
    assert "1.678, within its sampling error of the 1.680" in utility.warning("t0.05")
    measured = level(utility=inference_pb2.LevelUtility(margin=0.006, **fields(within))).utility
    assert measured.summary().endswith("(within its sampling error, ± 0.006)")


def fields(message) -> dict:
    return {f.name: getattr(message, f.name) for f, _ in message.ListFields()}


@pytest.mark.parametrize(
    ("rate", "label"), [(0.05, "5%"), (0.075, "7.5%"), (0.1, "10%"), (0.2, "20%"), (0.001, "0.1%")]
)
def test_a_levels_target_reads_as_its_label_says_it(rate, label):
    """`:.0%` printed a 7.5 % level as 7% or 8%: every report and the client show this."""
    assert percent(rate) == label
