"""Extraction: Kaggle archives (tar.7z, zip) and CSVs into parquet shards and tables."""
