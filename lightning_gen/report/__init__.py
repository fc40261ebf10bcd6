"""Turn finished runs into comparisons: an offline HTML/Markdown report (``compare``)."""
