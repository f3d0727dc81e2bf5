"""Detectors: the indexed single-event matcher now; threshold, sequence and flatline detectors next."""
