"""Demos that need no download: ``classification`` (a CNN on scikit-learn's digits, the
whole pipeline) and ``detection`` (RetinaNet on canvases of pasted digits)."""
