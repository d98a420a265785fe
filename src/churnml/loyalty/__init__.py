"""The loyalty programme: membership levels, KPIs, migration between tiers and levels, surveys."""
