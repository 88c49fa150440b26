"""Titles, fixed candidate lists and demonstration pools, on top of RecBole's datasets."""
