"""Prepared datasets: schema, readers, target samples, simulator and batches."""
