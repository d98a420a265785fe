"""The loyalty program: KPIs, cohorts, migration between tiers and levels, interest tags."""
