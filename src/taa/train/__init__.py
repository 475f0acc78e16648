"""Training, adaptation, evaluation and run folders."""
