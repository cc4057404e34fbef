"""The platform REST API: reads and writes over HTTP behind Ory Kratos identity, API tokens and RBAC per team."""
