"""The controller's Score call carries the run's env.math settings, math-verify's grading options
included (only with that verifier: the reward service refuses them with another)."""

from __future__ import annotations

from dapo_controller.loop import score_request

from dapo.config import parse_config


def test_grading_options_reach_the_score_request() -> None:
    math_cfg = parse_config(
        {"env": {"math": {"math_verify": {"float_rounding": 3, "strict": False, "string_comparison": True}}}}
    ).env.math
    request = score_request(math_cfg, [("\\boxed{2}", "2"), ("no", "3")])
    assert [(i.id, i.response, i.ground_truth) for i in request.items] == [
        ("0", "\\boxed{2}", "2"),
        ("1", "no", "3"),
    ]
    options = request.math_verify
    assert (options.float_rounding, options.numeric_precision, options.strict) == (3, 15, False)
    assert options.string_comparison and not options.allow_set_relation_comp
    assert request.HasField("math_verify")


def test_no_grading_options_with_the_dapo_rule() -> None:
    request = score_request(
        parse_config({"env": {"math": {"verifier": "dapo"}}}).env.math, [("Answer: 2", "2")]
    )
    assert request.verifier == "dapo" and not request.HasField("math_verify")
