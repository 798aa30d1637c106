"""Evaluation: attention masks (storemask), NS-LPIPS scoring, PIE-Bench data and metrics."""
