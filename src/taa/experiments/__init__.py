"""The demo, experiment grids, plots and reports."""
