"""Reports from results.json files alone: RD tables, BD-rates, comparisons and figures."""
