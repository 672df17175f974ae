"""Reports of runs and sweeps: load results.json files, aggregate over seeds, draw figures,
write Markdown and a self-contained HTML page, and push W&B Reports when online."""
