"""The loyalty dashboard: every view drawn, every text escaped."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from churnml.loyalty import dashboard, kpis
from churnml.loyalty.kpis import Period


def test_the_dashboard_draws_every_view_and_escapes_the_users_text():
    months = pd.date_range("2024-01-01", "2024-06-01", freq="MS")
    monthly = pd.DataFrame({"month": months, "repurchase_rate": [None, 0.5, 0.4, 0.3, 0.35, 0.45],
                            "churn_rate": [None, 0.1, 0.2, 0.1, 0.1, 0.05], "aov": [75, 40, 25, None, 40, None]})
    cohorts = pd.DataFrame({"cohort": pd.to_datetime(["2024-01-01"] * 3 + ["2024-03-01"]), "months_since": [0, 1, 4, 0],
                            "customers": [2, 1, 1, 1], "cohort_size": [2, 2, 2, 1], "retention": [1.0, 0.5, 0.5, 1.0]})
    baseline = Period("baseline", kpis.month_index(dt.date(2024, 1, 1)), kpis.month_index(dt.date(2024, 3, 1)))
    current = Period("current", kpis.month_index(dt.date(2024, 4, 1)), kpis.month_index(dt.date(2024, 6, 1)))
    periods = pd.DataFrame([
        {"period": "baseline", "months": baseline.label, "by": "all", "group": "all", "churn_rate": 0.13, "clv": 10.0},
        {"period": "current", "months": current.label, "by": "all", "group": "all", "churn_rate": 0.08, "clv": 12.0},
        {"period": "baseline", "months": baseline.label, "by": "tier", "group": "<core>", "churn_rate": 0.1, "clv": 30.0},
        {"period": "current", "months": current.label, "by": "tier", "group": "<core>", "churn_rate": 0.0, "clv": 33.0},
    ])
    progress = kpis.target_progress(periods, {"churn": kpis.ProgramTarget("churn_rate", -0.3),
                                              "nps": kpis.ProgramTarget("nps", 25, relative=False)})
    migration = pd.DataFrame({"from_state": ["new", "<core>"], "to_state": ["<core>", "<core>"], "customers": [1, 2],
                              "from_customers": [1, 2], "share": [1.0, 1.0]})
    figures = dashboard.dashboard_figures(monthly, cohorts, (baseline, current), periods, progress,
                                          {"tier": migration}, {"tier": ("<core>",)})
    assert list(figures) == ["progress against targets", "KPI trends", "retention by acquisition cohort",
                             "tier migration", "CLV by tier"]
    page = dashboard.render_dashboard("KPIs <demo>", {"data": "<script>"}, progress, periods, figures, ["no <surveys>"])
    assert page.count('src="data:image/png;base64,') == 5
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;core&gt;" in page
    assert "no &lt;surveys&gt;" in page and "Program targets" in page
