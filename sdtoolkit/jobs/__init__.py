"""Jobs: invert/train one image, edit it, read CSV cases; results on disk."""
