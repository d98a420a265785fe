"""Loyalty: membership levels, KPIs, cohorts, migration and surveys, as tables for retention teams."""
