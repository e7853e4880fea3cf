"""Serving: the export format and the query API. Never imports training code."""
