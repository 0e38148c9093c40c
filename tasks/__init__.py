"""Thin Prefect tasks over `planet/`: caching, retries, logging, artifacts."""
