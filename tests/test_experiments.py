"""Pilots and A/B tests: outcomes per assignment by hand, lift and CUPED on planted effects, the
sample-ratio check, and the pilot planner against statsmodels and the textbook formula."""

from __future__ import annotations

import math

import ibis
import numpy as np
import pandas as pd
import pytest
import scipy.stats
from statsmodels.stats.power import NormalIndPower

from churnml.errors import UserValueError
from churnml.programs.experiments import (
    LIFT_COLUMNS,
    OUTCOME_COLUMNS,
    SRM_COLUMNS,
    analyze_campaign,
    analyze_campaigns,
    assignment_outcomes,
    detectable_effect,
    plan_pilot,
    sample_ratio_check,
)

# Campaign "spring": contacts on 2024-03-10 at 14:00; a 14-day window covers 2024-03-11 to
# 2024-03-24 (whole days), a 30-day pre-period 2024-02-10 to 2024-03-10.
ASSIGNED = "2024-03-10 14:00"
WINDOW, PRE = 14, 30


def _frame(rows, columns):
    frame = pd.DataFrame(rows, columns=columns)
    frame["ts"] = pd.to_datetime(frame["ts"])
    return frame


@pytest.fixture
def treatments() -> pd.DataFrame:
    rows = [
        ("A", ASSIGNED, "spring", "treatment", 1.5),
        ("B", ASSIGNED, "spring", "Control", 0.0),   # groups compared case-insensitively
        ("C", ASSIGNED, "spring", "treatment", 1.5),
        ("D", ASSIGNED, "spring", "control", 0.0),
        ("E", ASSIGNED, "spring", "control", 0.0),
        ("A", "2024-04-01 09:00", "summer", "control", 0.0),
    ]
    return _frame(rows, ["customer_id", "ts", "campaign", "group", "cost"])


@pytest.fixture
def transactions() -> pd.DataFrame:
    rows = [
        # A: a two-line order inside the window, one on its last day (included), one the day
        # after it (excluded); before: one on the assignment day (pre-period), one on the
        # pre-period's first day and one the day before it (excluded).
        ("A", "2024-03-12 10:00", 60.0, "a1"),
        ("A", "2024-03-12 10:00", 40.0, "a1"),
        ("A", "2024-03-24 23:59", 25.0, "a2"),
        ("A", "2024-03-25 00:00", 99.0, "a3"),
        ("A", "2024-03-10 09:00", 20.0, "a0"),
        ("A", "2024-02-10 08:00", 7.0, "a-1"),
        ("A", "2024-02-09 23:00", 1000.0, "a-2"),
        # B: buys only after the window.
        ("B", "2024-03-25 12:00", 30.0, "b1"),
        # C: bought before, refunds part of that order inside the window: revenue -30, no purchase.
        ("C", "2024-03-01 12:00", 80.0, "c1"),
        ("C", "2024-03-15 12:00", -30.0, "c1"),
        # D: two lines without an order id at one instant: two orders.
        ("D", "2024-03-15 12:00", 25.0, ""),
        ("D", "2024-03-15 12:00", 15.0, None),
        # E: buys on the assignment day after the contact: pre-period, not outcome.
        ("E", "2024-03-10 20:00", 45.0, "e1"),
        # F: never assigned.
        ("F", "2024-03-15 12:00", 500.0, "f1"),
    ]
    return _frame(rows, ["customer_id", "ts", "amount", "order_id"])


@pytest.fixture
def surveys() -> pd.DataFrame:
    rows = [("A", "2024-03-11 10:00", "nps", 9.0), ("A", "2024-03-20 10:00", "nps", 6.0),
            ("A", "2024-03-09 10:00", "nps", 0.0),                   # before the window
            ("C", "2024-03-25 10:00", "csat", 2.0),                  # after it
            ("D", "2024-03-18 10:00", "CES", 5.0)]
    return _frame(rows, ["customer_id", "ts", "kind", "score"])


# --------------------------------------------------------------------------------------------
# Outcomes
# --------------------------------------------------------------------------------------------


def test_outcome_rows_by_hand(transactions, treatments, surveys):
    out = assignment_outcomes(transactions, treatments, window_days=WINDOW, pre_days=PRE, surveys=surveys)
    assert list(out.columns) == [*OUTCOME_COLUMNS[:8], "nps", "csat", "ces", *OUTCOME_COLUMNS[8:]]
    assert list(zip(out.campaign, out.customer_id)) == [("spring", c) for c in "ABCDE"] + [("summer", "A")]
    row = out.set_index(["campaign", "customer_id"])
    expected = {  # repurchased, orders, revenue, pre_repurchased, pre_orders, pre_revenue
        ("spring", "A"): (1, 2, 125.0, 1, 2, 27.0),
        ("spring", "B"): (0, 0, 0.0, 0, 0, 0.0),
        ("spring", "C"): (0, 0, -30.0, 1, 1, 80.0),
        ("spring", "D"): (1, 2, 40.0, 0, 0, 0.0),
        ("spring", "E"): (0, 0, 0.0, 1, 1, 45.0),
        # summer, contact 2024-04-01: A buys nothing in 2024-04-02..04-15; its pre-period
        # 2024-03-03..04-01 holds a0, a1, a2 and a3: 20 + 100 + 25 + 99.
        ("summer", "A"): (0, 0, 0.0, 1, 4, 244.0),
    }
    columns = ["repurchased", "orders", "revenue", "pre_repurchased", "pre_orders", "pre_revenue"]
    for key, values in expected.items():
        assert tuple(row.loc[key, columns]) == values, key
    assert row.loc[("spring", "A"), "group"] == "treatment" and row.loc[("spring", "B"), "group"] == "control"
    assert row.loc[("spring", "A"), "cost"] == 1.5
    assert row.loc[("spring", "A"), "nps"] == 7.5
    assert np.isnan(row.loc[("spring", "C"), "csat"]) and row.loc[("spring", "D"), "ces"] == 5.0
    assert out[["repurchased", "orders", "pre_orders"]].dtypes.eq("int64").all()
    assert out[["revenue", "pre_revenue", "cost", "nps"]].dtypes.eq("float64").all()


def test_one_campaign_and_no_surveys(transactions, treatments):
    out = assignment_outcomes(transactions, treatments.drop(columns="cost"), window_days=WINDOW, pre_days=PRE,
                              campaign="summer")
    assert list(out.columns) == list(OUTCOME_COLUMNS)
    assert out.customer_id.tolist() == ["A"] and out.cost.isna().all()


def test_without_order_ids_lines_at_one_instant_are_one_order(transactions, treatments):
    out = assignment_outcomes(transactions.drop(columns="order_id"), treatments, window_days=WINDOW, pre_days=PRE)
    row = out.set_index(["campaign", "customer_id"])
    assert row.loc[("spring", "D"), "orders"] == 1 and row.loc[("spring", "A"), "orders"] == 2


def test_later_data_cannot_change_outcomes_or_covariates(transactions, treatments, surveys):
    before = assignment_outcomes(transactions, treatments, window_days=WINDOW, pre_days=PRE, surveys=surveys)
    spring = treatments.campaign == "spring"
    # After each window's last day: nothing may change.
    window_end = treatments.ts.dt.normalize() + pd.Timedelta(days=WINDOW + 1)
    late = pd.DataFrame({"customer_id": treatments.customer_id, "ts": window_end, "amount": 70.0,
                         "order_id": [f"late{i}" for i in range(len(treatments))]})
    late_answers = pd.DataFrame({"customer_id": treatments.customer_id, "ts": window_end, "kind": "nps", "score": 0.0})
    after = assignment_outcomes(pd.concat([transactions, late]), treatments, window_days=WINDOW, pre_days=PRE,
                                surveys=pd.concat([surveys, late_answers]))
    pd.testing.assert_frame_equal(after[after.campaign == "spring"], before[before.campaign == "spring"])
    # After the assignment day, inside the spring window: the outcomes move, the covariates do not.
    day_after = pd.Timestamp(ASSIGNED).normalize() + pd.Timedelta(days=1)
    inside = pd.DataFrame({"customer_id": treatments.customer_id[spring], "ts": day_after, "amount": 70.0,
                           "order_id": [f"in{i}" for i in range(spring.sum())]})
    moved = assignment_outcomes(pd.concat([transactions, inside]), treatments, window_days=WINDOW, pre_days=PRE)
    pre = ["pre_repurchased", "pre_orders", "pre_revenue"]
    pd.testing.assert_frame_equal(moved.loc[moved.campaign == "spring", pre], before.loc[before.campaign == "spring", pre])
    assert (moved.loc[moved.campaign == "spring", "orders"].to_numpy()
            == before.loc[before.campaign == "spring", "orders"].to_numpy() + 1).all()


def test_duckdb_tables_give_the_same_rows(transactions, treatments, surveys):
    con = ibis.duckdb.connect()
    tables = {name: con.create_table(name, frame) for name, frame in
              [("transactions", transactions), ("treatments", treatments), ("surveys", surveys)]}
    on_duckdb = assignment_outcomes(tables["transactions"], tables["treatments"], window_days=WINDOW, pre_days=PRE,
                                    surveys=tables["surveys"])
    from_pandas = assignment_outcomes(transactions, treatments, window_days=WINDOW, pre_days=PRE, surveys=surveys)
    pd.testing.assert_frame_equal(on_duckdb, from_pandas)


@pytest.mark.parametrize("change, words", [
    (lambda t: t.assign(group=["treatment", "holdout", "treatment", "control", "control", "control"]), "'holdout'"),
    (lambda t: pd.concat([t, t.iloc[[0]]]), "customer 'A' in 'spring'"),
    (lambda t: t.drop(columns="campaign"), "'campaign'"),
])
def test_bad_treatments_are_one_line_errors(transactions, treatments, change, words):
    with pytest.raises(UserValueError, match=words) as caught:
        assignment_outcomes(transactions, change(treatments), window_days=WINDOW, pre_days=PRE)
    assert "\n" not in str(caught.value)


def test_bad_windows_and_unknown_campaigns_are_one_line_errors(transactions, treatments):
    with pytest.raises(UserValueError, match="window_days"):
        assignment_outcomes(transactions, treatments, window_days=0, pre_days=PRE)
    with pytest.raises(UserValueError, match="pre_days"):
        assignment_outcomes(transactions, treatments, window_days=WINDOW, pre_days=7.5)
    with pytest.raises(UserValueError, match="'autumn'"):
        assignment_outcomes(transactions, treatments, window_days=WINDOW, pre_days=PRE, campaign="autumn")


# --------------------------------------------------------------------------------------------
# Lift and CUPED
# --------------------------------------------------------------------------------------------


def _outcomes(control: dict, treatment: dict, campaign: str = "c") -> pd.DataFrame:
    parts = [pd.DataFrame(values).assign(group=group) for group, values in (("control", control), ("treatment", treatment))]
    frame = pd.concat(parts, ignore_index=True).assign(campaign=campaign)
    for column in ("repurchased", "orders", "revenue", "pre_repurchased", "pre_orders", "pre_revenue"):
        if column not in frame:
            frame[column] = 0
    return frame


def test_absolute_interval_is_welchs_by_hand():
    control = [0.0, 10.0, 30.0, 20.0, 0.0]
    treatment = [40.0, 10.0, 50.0, 30.0, 20.0, 60.0]
    frame = _outcomes({"revenue": control}, {"revenue": treatment})
    row = analyze_campaign(frame, cuped=False).set_index("metric").loc["revenue_per_customer"]
    # Means 12 and 35; sample variances 170 and 350; standard error sqrt(170/5 + 350/6).
    se2_c, se2_t = 170 / 5, 350 / 6
    se = math.sqrt(se2_c + se2_t)
    df = (se2_c + se2_t) ** 2 / (se2_c**2 / 4 + se2_t**2 / 5)
    half = scipy.stats.t.ppf(0.975, df) * se
    assert (row.control_mean, row.treatment_mean, row.lift) == pytest.approx((12.0, 35.0, 23.0))
    assert (row.lift_ci_lower, row.lift_ci_upper) == pytest.approx((23 - half, 23 + half), rel=1e-12)
    assert row.pvalue == pytest.approx(2 * scipy.stats.t.sf(23 / se, df), rel=1e-9)
    assert row.relative_lift == pytest.approx(35 / 12 - 1)
    assert (row.n_control, row.n_treatment) == (5, 6)
    assert row.ci_width_ratio == 1.0 and row.variance_reduction == 0.0


def _planted(n: int, lift: float, seed: int, related: bool = True) -> pd.DataFrame:
    """Customers with a propensity to buy that drives the pre-period and the window alike;
    treatment adds ``lift`` to the chance of a purchase in the window."""
    rng = np.random.default_rng(seed)
    propensity = 0.9 * rng.beta(0.5, 1.0, n)
    treated = rng.random(n) < 0.5
    pre = rng.random(n) < (propensity if related else rng.permutation(propensity))
    bought = rng.random(n) < propensity + lift * treated
    orders = bought * (1 + rng.poisson(2 * propensity))
    pre_orders = pre * (1 + rng.poisson(2 * propensity))
    return pd.DataFrame({
        "customer_id": np.arange(n).astype(str), "campaign": "winback",
        "group": np.where(treated, "treatment", "control"),
        "repurchased": bought.astype(int), "orders": orders, "revenue": orders * 40.0,
        "pre_repurchased": pre.astype(int), "pre_orders": pre_orders, "pre_revenue": pre_orders * 40.0,
    })


def test_a_planted_lift_is_covered_and_cuped_narrows_the_interval():
    frame = _planted(8000, 0.05, seed=16)
    table = analyze_campaign(frame).set_index(["metric", "estimator"])
    assert list(analyze_campaign(frame).columns) == list(LIFT_COLUMNS)
    plain, cuped = table.loc[("repurchase_rate", "difference")], table.loc[("repurchase_rate", "cuped")]
    for row in (plain, cuped):
        assert row.lift_ci_lower < 0.05 < row.lift_ci_upper
        assert row.lift_ci_lower > 0 and row.pvalue < 0.001
    assert cuped.covariate == "pre_repurchased" and pd.isna(plain.covariate)
    assert cuped.ci_width < plain.ci_width and cuped.ci_width_ratio < 0.95
    # CUPED removes the share rho^2 of the variance, rho the correlation of covariate and outcome.
    rho = np.corrcoef(frame.pre_repurchased, frame.repurchased)[0, 1]
    assert cuped.variance_reduction == pytest.approx(rho**2, abs=0.01)
    # Churn is the mirror of repurchase.
    churn = table.loc[("churn_rate", "difference")]
    assert churn.lift == pytest.approx(-plain.lift) and churn.control_mean == pytest.approx(1 - plain.control_mean)
    assert table.loc[("orders_per_customer", "cuped"), "ci_width_ratio"] < 0.95
    assert not plain.srm_mismatch


def test_cuped_with_an_unrelated_covariate_changes_nothing_much():
    frame = _planted(8000, 0.05, seed=17, related=False)
    cuped = analyze_campaign(frame).set_index(["metric", "estimator"]).loc[("repurchase_rate", "cuped")]
    assert cuped.variance_reduction < 0.005 and cuped.lift_ci_lower < 0.05 < cuped.lift_ci_upper


def test_no_lift_is_not_found_where_none_was_planted():
    row = analyze_campaign(_planted(8000, 0.0, seed=18)).set_index(["metric", "estimator"]).loc[
        ("repurchase_rate", "cuped")]
    assert row.lift_ci_lower < 0 < row.lift_ci_upper and row.pvalue > 0.05


def test_survey_means_are_compared_over_the_customers_who_answered():
    frame = _outcomes({"nps": [9.0, 7.0, np.nan, 5.0]}, {"nps": [10.0, np.nan, 8.0], "csat": [4.0, np.nan, np.nan]})
    rows = analyze_campaign(frame).set_index("metric")
    nps = rows.loc["nps_mean"]
    assert (nps.n_control, nps.n_treatment) == (3, 2)
    assert (nps.control_mean, nps.treatment_mean) == pytest.approx((7.0, 9.0))
    assert nps.estimator == "difference"
    csat = rows.loc["csat_mean"]  # one answer, in one group: counted, not tested
    assert (csat.n_control, csat.n_treatment) == (0, 1) and np.isnan(csat.lift)
    assert "ces_mean" not in rows.index


def test_every_campaign_is_analysed_and_an_empty_group_names_its_campaign():
    frames = [_planted(400, 0.05, seed=1).assign(campaign="b"), _planted(400, 0.05, seed=2).assign(campaign="a")]
    table = analyze_campaigns(pd.concat(frames), cuped=False)
    assert table.campaign.tolist() == ["a"] * 4 + ["b"] * 4
    no_control = frames[0].assign(campaign="solo", group="treatment")
    with pytest.raises(UserValueError, match="campaign 'solo' has 0 customers in its control group") as caught:
        analyze_campaigns(pd.concat([frames[1], no_control]))
    assert "\n" not in str(caught.value)
    with pytest.raises(UserValueError, match="analyze_campaigns"):
        analyze_campaign(pd.concat(frames))


# --------------------------------------------------------------------------------------------
# Sample-ratio mismatch
# --------------------------------------------------------------------------------------------


def _split(n_control: int, n_treatment: int, campaign: str) -> pd.DataFrame:
    return pd.DataFrame({"campaign": campaign, "group": ["control"] * n_control + ["treatment"] * n_treatment})


def test_sample_ratio_check_fires_on_a_60_40_split_of_10000():
    counts = pd.concat([_split(4000, 6000, "skewed"), _split(5000, 5000, "even"), _split(5030, 4970, "noise")])
    table = sample_ratio_check(counts).set_index("campaign")
    assert list(sample_ratio_check(counts).columns) == list(SRM_COLUMNS)
    assert table.loc["skewed", "mismatch"] and not table.loc["even", "mismatch"] and not table.loc["noise", "mismatch"]
    # Normal approximation with continuity correction: z = (|6000 - 5000| - 0.5) / sqrt(10000 / 4).
    assert table.loc["skewed", "pvalue"] == pytest.approx(2 * scipy.stats.norm.sf(999.5 / 50), rel=1e-9)
    assert table.loc["noise", "pvalue"] == pytest.approx(2 * scipy.stats.norm.sf(29.5 / 50), rel=1e-9)
    assert table.loc["skewed", "treatment_share"] == 0.6
    # Planned 60/40, the same split fits.
    planned = sample_ratio_check(_split(4000, 6000, "skewed"), expected_treatment_share=0.6)
    assert not planned.mismatch.iloc[0] and planned.pvalue.iloc[0] > 0.5


def test_sample_ratio_check_reads_an_ibis_treatments_table():
    table = ibis.memtable(_split(3, 12, "small").assign(group=lambda f: f.group.str.upper()))
    row = sample_ratio_check(table).iloc[0]
    # Under 1,000 assignments the exact binomial test.
    assert (row.n_control, row.n_treatment) == (3, 12)
    assert row.pvalue == pytest.approx(scipy.stats.binomtest(12, 15, 0.5).pvalue)
    assert analyze_campaign(_planted(40, 0.0, seed=3)).srm_pvalue.nunique() == 1


# --------------------------------------------------------------------------------------------
# Pilot size
# --------------------------------------------------------------------------------------------


def test_pilot_size_agrees_with_the_textbook_and_statsmodels():
    plan = plan_pilot(base_rate=0.10, effect=0.02)
    # Chow, Shao and Wang (2008) 4.2: n = (z_.975 + z_.8)^2 (p1 q1 + p2 q2) / d^2 per group
    # = 7.8489 * (0.09 + 0.1056) / 0.0004 = 3838.1.
    z = scipy.stats.norm.ppf(0.975) + scipy.stats.norm.ppf(0.8)
    textbook = z**2 * (0.10 * 0.90 + 0.12 * 0.88) / 0.02**2
    assert textbook == pytest.approx(3838.1, abs=0.1)
    assert plan.n_control == plan.n_treatment == math.ceil(textbook)
    assert plan.n_total == 2 * plan.n_control and plan.relative_effect == pytest.approx(0.2)
    # statsmodels' z-test power for the same convention: the standardised effect is the
    # difference over the unpooled per-customer standard deviation at equal groups.
    sd = math.sqrt((0.10 * 0.90 + 0.12 * 0.88) / 2)
    n1 = NormalIndPower().solve_power(effect_size=0.02 / sd, alpha=0.05, power=0.8, ratio=1.0)
    assert plan.n_control == pytest.approx(n1, rel=0.01)
    relative = plan_pilot(base_rate=0.10, effect=0.2, relative=True)
    assert (relative.n_control, relative.n_treatment, relative.effect) == (plan.n_control, plan.n_treatment,
                                                                          pytest.approx(0.02))


def test_unequal_groups_and_the_detectable_effect():
    plan = plan_pilot(base_rate=0.25, effect=0.03, alpha=0.01, power=0.9, treatment_share=0.2)
    # statsmodels: nobs1 is the control group, ratio the treatment over the control group.
    share = 0.2
    sd = math.sqrt(share * 0.25 * 0.75 + (1 - share) * 0.28 * 0.72)
    n1 = NormalIndPower().solve_power(effect_size=0.03 / sd, alpha=0.01, power=0.9, ratio=share / (1 - share))
    assert plan.n_control == pytest.approx(n1, rel=0.01)
    assert plan.n_treatment == pytest.approx(n1 * share / (1 - share), rel=0.01)
    mde = detectable_effect(base_rate=0.25, n_total=plan.n_total, alpha=0.01, power=0.9, treatment_share=share)
    assert mde.effect == pytest.approx(0.03, rel=1e-3)
    assert mde.n_control + mde.n_treatment == plan.n_total
    # The power statsmodels gives at the detectable effect is the power asked for.
    sd = math.sqrt(share * 0.25 * 0.75 + (1 - share) * (0.25 + mde.effect) * (0.75 - mde.effect))
    power = NormalIndPower().power(effect_size=mde.effect / sd, nobs1=mde.n_control, alpha=0.01,
                                   ratio=mde.n_treatment / mde.n_control)
    assert power == pytest.approx(0.9, abs=0.002)
    # Four times the customers, about half the effect.
    assert detectable_effect(base_rate=0.25, n_total=4 * plan.n_total, alpha=0.01, power=0.9,
                             treatment_share=share).effect == pytest.approx(0.015, rel=0.05)


@pytest.mark.parametrize("arguments, name", [
    ({"base_rate": 0.0, "effect": 0.02}, "base_rate"),
    ({"base_rate": 1.5, "effect": 0.02}, "base_rate"),
    ({"base_rate": 0.1, "effect": 0.02, "power": 1.0}, "power"),
    ({"base_rate": 0.1, "effect": 0.02, "power": 80}, "power"),
    ({"base_rate": 0.1, "effect": 0.0}, "effect"),
    ({"base_rate": 0.1, "effect": -0.01}, "effect"),
    ({"base_rate": 0.1, "effect": 0.02, "alpha": 0}, "alpha"),
    ({"base_rate": 0.1, "effect": 0.02, "treatment_share": 1}, "treatment_share"),
    ({"base_rate": 0.9, "effect": 0.2}, "effect"),
])
def test_planner_mistakes_are_one_line_errors_naming_the_parameter(arguments, name):
    with pytest.raises(UserValueError, match=rf"plan_pilot: {name}\b") as caught:
        plan_pilot(**arguments)
    assert "\n" not in str(caught.value)


def test_detectable_effect_refuses_a_pilot_too_small():
    with pytest.raises(UserValueError, match="n_total"):
        detectable_effect(base_rate=0.1, n_total=3)
    with pytest.raises(UserValueError, match="larger pilot"):
        detectable_effect(base_rate=0.9, n_total=10)

