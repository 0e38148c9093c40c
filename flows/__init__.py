"""Prefect flows composing the tasks; one subflow per stage, each runnable alone."""
