"""Reusable blocks: embeddings, MLPs, experts and gates, towers, critics."""
