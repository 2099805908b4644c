"""From records to results: the record store, tidy tables and the summary, paired statistics, plots
and the HTML leaderboard."""
