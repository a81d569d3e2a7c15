"""Diagnostics of a run's data: divergence, information-gain proxies, diversity and collapse.

``estimators`` holds the sample-based estimators (NumPy, and SciPy's k-d tree for neighbours); ``stage`` the per-iteration
``diagnose`` stage that applies them to the selected data; ``text`` the text statistics;
``text_embedding`` the MiniLM sentence-embedding plug-in (imports sentence-transformers when used).
"""
