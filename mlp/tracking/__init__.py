"""Experiment tracking over MLflow's REST protocol, and the registry workflow from a run to a pull request.

`store` keeps experiments, runs and metric history in SQL (SQLite or PostgreSQL); `artifacts`
keeps files in a folder or S3; `server` speaks MLflow's REST API over both; `registry` turns a
run into a new model version on a branch and a pull request.
"""
