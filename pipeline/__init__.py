"""Video I/O, Ray Data stages and storage (issue 3). Knows nothing of attention windows."""
