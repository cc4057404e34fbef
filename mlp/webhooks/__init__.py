"""Webhooks: GitHub and GitLab receivers, Git host clients, and the pull-request flow (edge).

- `receiver`: FastAPI app; signature / token checks, body limit, dedupe, background workers.
- `store`: SQLite delivery log (deduplication and a durable queue).
- `events`: host payloads -> `PushEvent`, `ChangeRequestEvent`, `PingEvent`.
- `github`, `gitlab`, `hosting`: REST clients behind the `GitHost` protocol.
- `prcheck`: check out base and head, validate, render and plan (also `mlp plan`).
- `report`: the PR comment's markdown; `flow`: what each event does; `service`: wiring.
"""
