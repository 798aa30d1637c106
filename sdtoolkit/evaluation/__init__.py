"""Evaluation: attention masks (storemask) and NS-LPIPS scoring."""
